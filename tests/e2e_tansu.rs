#![cfg(feature = "e2e")]
//! The relay end to end: a real Kafka-protocol broker (tansu on SQLite), real target functions served by
//! `cargo lambda watch`, and the relay as users run it (`kafka-lambda-relay run`, and the relay itself
//! under `cargo lambda watch`, invoked with a schedule's payload). Started by `scripts/test.sh`.

mod common;

use common::*;
use serde_json::{json, Value};

const RECORDING: &str = "recording-target";

/// Per partition of the report: (partition, CommittedOffset, Lag), in partition order.
fn reported_partitions(mapping: &Value) -> Vec<(i64, Option<i64>, Option<i64>)> {
    let mut partitions: Vec<(i64, Option<i64>, Option<i64>)> = mapping["Partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| (p["Partition"].as_i64().unwrap_or(-1), p["CommittedOffset"].as_i64(), p["Lag"].as_i64()))
                .collect()
        })
        .unwrap_or_default();
    partitions.sort();
    partitions
}

/// A topic with `partitions` partitions and a fresh group name.
fn fresh_topic(partitions: i32) -> TestResult<(String, String)> {
    let topic = unique_name("e2e");
    create_topic(&tansu(), &topic, partitions)?;
    Ok((topic, unique_name("group")))
}

#[test]
fn tansu_keeps_a_groups_committed_offsets() -> TestResult {
    let (topic, group) = fresh_topic(3)?;
    populate_topic(&tansu(), &topic, 3, 30, |i| format!("r{i}"))?;
    assert_eq!(committed_offsets(&tansu(), &group, &topic, 3)?, vec![None, None, None]);
    commit_offsets(&tansu(), &group, &topic, &[4, 0, 10])?;
    assert_eq!(committed_offsets(&tansu(), &group, &topic, 3)?, vec![Some(4), Some(0), Some(10)]);
    Ok(())
}

#[test]
fn delivers_100k_records_once_in_partition_order_and_commits_next_offsets() -> TestResult {
    const PARTITIONS: i32 = 4;
    const COUNT: usize = 100_000;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let started = std::time::Instant::now();
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, COUNT, |i| format!("r-{i}"))?;
    eprintln!("produced {COUNT} records in {:?}", started.elapsed());
    let mapping = tansu_mapping(RECORDING, &topic, &group);
    let uuid = mapping["UUID"].as_str().unwrap_or_default().to_owned();

    let started = std::time::Instant::now();
    let report = run_relay_ok(&json!({"Mappings": [mapping]}))?;
    eprintln!("the relay delivered them in {:?}", started.elapsed());

    assert_delivered_exactly_once(RECORDING, &topic, &produced)?;
    let expected_next = next_offsets(&produced, PARTITIONS);
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, expected_next);
    let m = mapping_report(&report, &uuid)?;
    assert_eq!(m["State"], "Enabled", "report: {m}");
    assert_eq!(m["ErrorCode"], Value::Null, "report: {m}");
    assert_eq!(m["LastProcessingResult"], "OK", "report: {m}");
    assert_eq!(m["Counts"]["Delivered"], COUNT, "report: {m}");
    assert_eq!(m["Counts"]["FailedInvocations"], 0, "report: {m}");
    assert_eq!(m["OffsetLag"]["Sum"], 0, "report: {m}");
    let want: Vec<(i64, Option<i64>, Option<i64>)> =
        expected_next.iter().enumerate().map(|(p, next)| (p as i64, *next, Some(0))).collect();
    assert_eq!(reported_partitions(m), want, "report: {m}");
    Ok(())
}

#[test]
fn a_restarted_run_delivers_only_the_records_produced_since() -> TestResult {
    const PARTITIONS: i32 = 3;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let mapping = tansu_mapping(RECORDING, &topic, &group);
    let config = json!({"Mappings": [mapping]});
    let first = populate_topic(&tansu(), &topic, PARTITIONS, 600, |i| format!("first-{i}"))?;
    run_relay_ok(&config)?;
    assert_delivered_exactly_once(RECORDING, &topic, &first)?;

    let second = populate_topic(&tansu(), &topic, PARTITIONS, 450, |i| format!("second-{i}"))?;
    let report = run_relay_ok(&config)?;

    let mut all = first.clone();
    all.extend(second.iter().cloned());
    all.sort();
    assert_delivered_exactly_once(RECORDING, &topic, &all)?;
    let m = mapping_report(&report, mapping["UUID"].as_str().unwrap_or_default())?;
    assert_eq!(m["Counts"]["Delivered"], second.len(), "second run's report: {m}");
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&all, PARTITIONS));
    Ok(())
}

#[test]
fn at_timestamp_skips_records_before_the_timestamp() -> TestResult {
    const PARTITIONS: i32 = 2;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let now = unix_seconds_now();
    populate_topic_at(&tansu(), &topic, PARTITIONS, 100, Some((now - 120) * 1000), |i| format!("old-{i}"))?;
    let recent =
        populate_topic_at(&tansu(), &topic, PARTITIONS, 80, Some((now - 60) * 1000), |i| format!("recent-{i}"))?;
    let mut mapping = tansu_mapping(RECORDING, &topic, &group);
    mapping["StartingPosition"] = json!("AT_TIMESTAMP");
    mapping["StartingPositionTimestamp"] = json!(now - 90);

    run_relay_ok(&json!({"Mappings": [mapping]}))?;

    assert_delivered_exactly_once(RECORDING, &topic, &recent)?;
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&recent, PARTITIONS));
    Ok(())
}

#[test]
fn trim_horizon_starts_at_the_oldest_record() -> TestResult {
    const PARTITIONS: i32 = 2;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 120, |i| format!("r{i}"))?;
    let mapping = tansu_mapping(RECORDING, &topic, &group);
    assert_eq!(mapping["StartingPosition"], "TRIM_HORIZON");

    run_relay_ok(&json!({"Mappings": [mapping]}))?;

    assert_delivered_exactly_once(RECORDING, &topic, &produced)?;
    Ok(())
}

#[test]
fn latest_skips_existing_records_and_keeps_its_place_for_the_next_run() -> TestResult {
    const PARTITIONS: i32 = 2;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let before = populate_topic(&tansu(), &topic, PARTITIONS, 100, |i| format!("before-{i}"))?;
    let mut mapping = tansu_mapping(RECORDING, &topic, &group);
    mapping["StartingPosition"] = json!("LATEST");
    let config = json!({"Mappings": [mapping]});

    run_relay_ok(&config)?;
    assert_eq!(delivered(RECORDING, &topic)?, vec![], "LATEST delivered records produced before the run");
    // A scheduled relay is not running between runs: records produced then are after LATEST's starting
    // point and must not be skipped by the next run starting at a new "latest".
    let after = populate_topic(&tansu(), &topic, PARTITIONS, 70, |i| format!("after-{i}"))?;
    run_relay_ok(&config)?;

    assert_delivered_exactly_once(RECORDING, &topic, &after)?;
    let mut all = before;
    all.extend(after);
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&all, PARTITIONS));
    Ok(())
}

#[test]
fn an_existing_groups_committed_offsets_win_over_the_starting_position() -> TestResult {
    const PARTITIONS: i32 = 2;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 100, |i| format!("r{i}"))?;
    commit_offsets(&tansu(), &group, &topic, &[20, 35])?;
    let expected: Vec<Produced> =
        produced.iter().filter(|r| r.offset >= [20, 35][r.partition as usize]).cloned().collect();

    for position in ["LATEST", "TRIM_HORIZON"] {
        let mut mapping = tansu_mapping(RECORDING, &topic, &group);
        mapping["StartingPosition"] = json!(position);
        run_relay_ok(&json!({"Mappings": [mapping]}))?;
        // The second pass finds everything committed: still exactly the records after the group's offsets.
        assert_delivered_exactly_once(RECORDING, &topic, &expected).map_err(|e| format!("{position}: {e}"))?;
    }
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&produced, PARTITIONS));
    Ok(())
}

/// The environment that bounds the relay's run under `cargo lambda watch`: watch hands every invocation a
/// deadline of 600000 ms after the Unix epoch (already past), so the Lambda context cannot bound it there.
/// The relay stops once caught up (the Lambda default) well before this.
fn watch_run_env() -> Vec<(&'static str, String)> {
    vec![("RELAY_MAX_SECONDS", "120".to_owned())]
}

/// `events/NAME`, the sample payloads users invoke the relay with, when the repository has it; else
/// `fallback`, the same shape.
fn sample_event(name: &str, fallback: Value) -> TestResult<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).map_err(|e| format!("{path:?}: {e}"))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(fallback),
        Err(e) => Err(format!("{path:?}: {e}").into()),
    }
}

/// Produces 300 records, serves the relay under `cargo lambda watch` with `env(config)` added to its
/// environment, invokes it with `payload(config)`, and checks every record was delivered once and committed.
fn relay_under_watch_delivers(
    env: impl Fn(&Value) -> Vec<(&'static str, String)>,
    payload: impl Fn(&Value) -> TestResult<Value>,
) -> TestResult {
    const PARTITIONS: i32 = 2;
    let (topic, group) = fresh_topic(PARTITIONS)?;
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 300, |i| format!("scheduled-{i}"))?;
    // The sample mapping, pointed at this test's broker, topic, group and target.
    let mut mapping =
        sample_event("one-mapping.json", json!({"Mappings": [tansu_mapping(RECORDING, &topic, &group)]}))?["Mappings"]
            [0]
        .take();
    let uuid = uuid::Uuid::new_v4().to_string();
    mapping["UUID"] = json!(uuid);
    mapping["FunctionName"] = json!(RECORDING);
    mapping["Topics"] = json!([topic]);
    mapping["SelfManagedEventSource"] = json!({"Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [tansu()]}});
    mapping["SelfManagedKafkaEventSourceConfig"] = json!({"ConsumerGroupId": group});
    let config = json!({"Mappings": [mapping]});
    let mut watch_env = watch_run_env();
    watch_env.extend(env(&config));
    let mut watch = RelayWatch::start(&watch_env)?;

    let report = watch.invoke_report(&payload(&config)?)?;

    assert_delivered_exactly_once(RECORDING, &topic, &produced)?;
    let m = mapping_report(&report, &uuid)?;
    assert_eq!(m["Counts"]["Delivered"], produced.len(), "report: {report}");
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, next_offsets(&produced, PARTITIONS));
    Ok(())
}

#[test]
fn the_relay_under_cargo_lambda_watch_runs_the_config_in_its_payload() -> TestResult {
    relay_under_watch_delivers(|_| vec![], |config| Ok(config.clone()))
}

#[test]
fn the_relay_under_cargo_lambda_watch_reads_relay_config_on_a_scheduled_event() -> TestResult {
    let scheduled_event = sample_event(
        "scheduled-event.json",
        json!({
            "version": "0",
            "id": "89d1a02d-5ec7-412e-82f5-13505f849b41",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-11-22T04:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/kafka-lambda-relay-schedule"],
            "detail": {}
        }),
    )?;
    assert_eq!(scheduled_event["detail-type"], "Scheduled Event");
    relay_under_watch_delivers(|config| vec![("RELAY_CONFIG", config.to_string())], |_| Ok(scheduled_event.clone()))
}

#[test]
fn the_relay_under_cargo_lambda_watch_refuses_the_invalid_sample_event_listing_every_violation() -> TestResult {
    let payload = sample_event("invalid.json", json!({}))?;
    let mut watch = RelayWatch::start(&watch_run_env())?;
    let finished = watch.invoke(&payload)?;
    let output = format!("{}\n{}\n{}", finished.stdout, finished.stderr, watch.log_text());
    // cargo lambda wraps the error message in a box at the terminal width: unwrap it.
    let output = output.replace('│', " ").split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(output.contains("ESM_CONFIG_NOT_VALID"), "invoke output:\n{output}");
    // Sentences only the relay's validation writes (the payload itself holds the field names).
    for violation in [
        "BatchSize: 0 is out of range; allowed 1-10000",
        "MaximumBatchingWindowInSeconds: 301 is out of range; allowed 0-300",
        "StartingPositionTimestamp: is required with StartingPosition AT_TIMESTAMP",
    ] {
        assert!(output.contains(violation), "{violation:?} is not reported:\n{output}");
    }
    assert!(!output.contains("partition assigned"), "nothing polled");
    Ok(())
}
