#![cfg(feature = "e2e")]
//! Several workers on one consumer group on tansu, as the scheduled run's fan-out starts them: real `run`
//! processes, one of them killed with SIGKILL midway, delivering to a recording target that checks no
//! partition is ever in two invocations at once.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kafka_lambda_relay::invoke::server::{handler, LocalLambda, Reply};
use serde_json::json;

/// (partition, offset) of every record of a Kafka event, in event order.
fn event_records(payload: &[u8]) -> Vec<(i32, i64)> {
    let event: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let mut keys: Vec<(&String, &serde_json::Value)> = event["records"].as_object().map(|m| m.iter().collect()).unwrap_or_default();
    keys.sort_by_key(|(k, _)| (*k).clone());
    keys.into_iter()
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .map(|r| (r["partition"].as_i64().unwrap_or(-1) as i32, r["offset"].as_i64().unwrap_or(-1)))
        .collect()
}

#[test]
fn three_workers_on_one_group_over_twelve_partitions_never_overlap_and_lose_nothing_when_one_is_killed() -> TestResult {
    const PARTITIONS: i32 = 12;
    const WORKERS: usize = 3;
    let topic = unique_name("scale");
    let group = unique_name("group");
    create_topic(&tansu(), &topic, PARTITIONS)?;
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 2_400, |i| format!("r{i}"))?;

    // The recording target, in process: every invocation's records in arrival order, and any partition
    // found in two invocations at once (across every worker).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let lambda = runtime.block_on(LocalLambda::start())?;
    let overlaps = register_recorder(&lambda, Duration::from_millis(200));
    let mut mapping = tansu_mapping("recorder", &topic, &group);
    mapping["BatchSize"] = json!(10);
    mapping["MaximumBatchingWindowInSeconds"] = json!(0);
    let dir = TempDir::new("scale-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec(&json!({"Mappings": [mapping]}))?)?;

    // Each worker invokes at most 4 partitions at once (a worker's capacity), so the work needs all three.
    // Survivors run past the killed worker's session timeout (10 s), so its partitions come to them.
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let child = Command::new(relay_bin())
            .args(["run", "--target-timeout", "3", "--max-seconds", "30", "--max-in-flight", "4", "--config"])
            .arg(&file)
            .env("AWS_ENDPOINT_URL_LAMBDA", lambda.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        workers.push(ChildGuard::new(&format!("worker {worker}"), child));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Kill one worker midway: once a quarter of the records were delivered.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lambda.invocations("recorder").iter().map(|i| event_records(&i.payload).len()).sum::<usize>() < produced.len() / 4 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    workers[1].child().kill()?; // SIGKILL: no commit, no leaving the group.
    let mut reports = Vec::new();
    for (index, worker) in workers.iter_mut().enumerate() {
        let status = worker.wait_timeout(Duration::from_secs(90), &|| None)?;
        if index != 1 {
            assert!(status.success(), "worker {index} exited with {status}");
            let mut stdout = String::new();
            std::io::Read::read_to_string(worker.child().stdout.as_mut().ok_or("stdout")?, &mut stdout)?;
            reports.push(serde_json::from_str::<serde_json::Value>(&stdout)?);
        }
    }

    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a partition was in two invocations at once");
    let all: Vec<(i32, i64)> = lambda.invocations("recorder").iter().flat_map(|i| event_records(&i.payload)).collect();
    let unique: BTreeSet<(i32, i64)> = all.iter().copied().collect();
    let expected: BTreeSet<(i32, i64)> = produced.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(unique, expected, "every record delivered at least once");
    // In order per partition: each record's first delivery follows the first delivery of the one before.
    let mut first_seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (partition, offset) in &all {
        if seen.insert((*partition, *offset)) {
            first_seen.entry(*partition).or_default().push(*offset);
        }
    }
    for (partition, offsets) in first_seen {
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {partition}: first deliveries in offset order");
    }
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&produced, PARTITIONS));
    let polled: Vec<i64> = reports.iter().map(|r| r["Mappings"][0]["Counts"]["Polled"].as_i64().unwrap_or(0)).collect();
    assert!(polled.iter().all(|n| *n > 0), "both survivors consumed: {polled:?} {reports:?}");
    drop(runtime);
    Ok(())
}

/// Registers the recording target "recorder" (each invocation held `hold`) and returns the count of times
/// a partition was found in two invocations at once (across every worker).
fn register_recorder(lambda: &LocalLambda, hold: Duration) -> Arc<AtomicUsize> {
    let busy: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (flight, overlap) = (busy.clone(), overlaps.clone());
    lambda.register(
        "recorder",
        Duration::from_secs(3),
        handler(move |invocation| {
            let partitions: HashSet<i32> = event_records(&invocation.payload).into_iter().map(|(p, _)| p).collect();
            for p in &partitions {
                if !flight.lock().unwrap().insert(*p) {
                    overlap.fetch_add(1, Ordering::SeqCst);
                }
            }
            let flight = flight.clone();
            async move {
                tokio::time::sleep(hold).await;
                let mut busy = flight.lock().unwrap();
                for p in &partitions {
                    busy.remove(p);
                }
                Reply::success("{}")
            }
        }),
    );
    overlaps
}

/// `run --workers 3` on a laptop: three processes on one group share the partitions, and one report lists
/// every worker's share.
#[test]
fn run_with_three_workers_shares_the_partitions_and_reports_every_worker() -> TestResult {
    const PARTITIONS: i32 = 12;
    let topic = unique_name("workers");
    let group = unique_name("group");
    create_topic(&tansu(), &topic, PARTITIONS)?;
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 1_200, |i| format!("r{i}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let lambda = runtime.block_on(LocalLambda::start())?;
    let overlaps = register_recorder(&lambda, Duration::from_millis(100));
    let mut mapping = tansu_mapping("recorder", &topic, &group);
    mapping["BatchSize"] = json!(10);
    let finished = run_three_workers(&mapping, &lambda, &["--until-idle", "--max-seconds", "60"])?;
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr_tail());
    let report = finished.json()?;
    let entries = report["Mappings"].as_array().ok_or("Mappings")?;
    assert_eq!(entries.len(), 3, "one entry per worker: {report}");
    let polled: Vec<i64> = entries.iter().map(|m| m["Counts"]["Polled"].as_i64().unwrap_or(0)).collect();
    assert!(polled.iter().filter(|n| **n > 0).count() >= 2, "the partitions were shared: {polled:?}");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a partition was in two invocations at once; the workers' log:\n{}", finished.stderr_tail());
    let delivered: BTreeSet<(i32, i64)> = lambda.invocations("recorder").iter().flat_map(|i| event_records(&i.payload)).collect();
    let expected: BTreeSet<(i32, i64)> = produced.iter().map(|p| (p.partition, p.offset)).collect();
    assert_eq!(delivered, expected, "every record delivered");
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&produced, PARTITIONS));
    drop(runtime);
    Ok(())
}

/// A LATEST mapping's first run with three workers while records arrive: every worker looks the partitions'
/// starts up when they are assigned (no committed offsets yet), and still no partition is ever in two
/// invocations at once. (A start lookup made in the assign callback for TRIM_HORIZON, tried and reverted,
/// made the three-workers test above fail that way when a worker left mid-run.)
#[test]
fn latest_first_run_with_three_workers_never_overlaps() -> TestResult {
    const PARTITIONS: i32 = 12;
    let topic = unique_name("latest-workers");
    let group = unique_name("group");
    create_topic(&tansu(), &topic, PARTITIONS)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let lambda = runtime.block_on(LocalLambda::start())?;
    let overlaps = register_recorder(&lambda, Duration::from_millis(100));
    let mut mapping = tansu_mapping("recorder", &topic, &group);
    mapping["BatchSize"] = json!(10);
    mapping["StartingPosition"] = json!("LATEST");
    let bootstrap = tansu();
    let producer_topic = topic.clone();
    // 60 records every 400 ms for 12 s, while the workers join, look their starts up and consume.
    let producer = std::thread::spawn(move || {
        for round in 0..30 {
            std::thread::sleep(Duration::from_millis(400));
            let _ = populate_topic(&bootstrap, &producer_topic, PARTITIONS, 60, |i| format!("r{round}-{i}"));
        }
    });
    let finished = run_three_workers(&mapping, &lambda, &["--max-seconds", "20"])?;
    let _ = producer.join();
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr_tail());
    assert!(!lambda.invocations("recorder").is_empty(), "records produced during the run were delivered");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a partition was in two invocations at once; the workers' log:\n{}", finished.stderr_tail());
    drop(runtime);
    Ok(())
}

/// `run --workers 3 <args>` of `mapping` on a laptop, invoking through `lambda`: at most two invocations in
/// flight per process, a 3 s target timeout.
fn run_three_workers(mapping: &serde_json::Value, lambda: &LocalLambda, args: &[&str]) -> TestResult<Finished> {
    let dir = TempDir::new("workers-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec(&json!({"Mappings": [mapping]}))?)?;
    let mut command = Command::new(relay_bin());
    command
        .args(["run", "--workers", "3", "--target-timeout", "3", "--max-in-flight", "2"])
        .args(args)
        .arg("--config")
        .arg(&file)
        .env("AWS_ENDPOINT_URL_LAMBDA", lambda.endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "warn");
    run_captured("relay run --workers 3", command, PROCESS_TIMEOUT)
}
