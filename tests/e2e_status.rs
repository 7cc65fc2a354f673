#![cfg(feature = "e2e")]
//! `kafka-lambda-relay status` against tansu: a lagging partition, a partition with an earlier run's retry
//! state, and a caught-up one are reported with their lag in records and seconds, and nothing in the
//! cluster changes (offsets and metadata).
//!
//! Why the blocked partition is asserted only as far as tansu allows: tansu 0.6.0 stores a commit's metadata
//! (its OffsetCommit handler writes the `metadata` column of its `consumer_offset` table) but never returns
//! it: its OffsetFetch handler answers `metadata: ""` (versions 0-7) or null (8+) whatever was committed, and
//! its storage query (`consumer_offset_select.sql`) selects the offset only. The newest release line
//! (0.7.0-pre, renamed nisshi) answers the same, so no tansu version keeps it. On tansu the partition an
//! earlier run was blocked on therefore shows as a lagging partition at the blocked offset with no `Blocked`
//! state; `tests/status_mock.rs` covers `Blocked` on librdkafka's mock cluster, which keeps metadata as Kafka
//! and MSK do. If tansu starts returning metadata, the first assertion fails and says so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use kafka_lambda_relay::commit::RetryState;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

fn group_consumer(group: &str) -> TestResult<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", tansu())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Commits (partition, offset, metadata) for `group`, as an earlier relay run would have.
fn commit_with_metadata(group: &str, topic: &str, offsets: &[(i32, i64, String)]) -> TestResult {
    let consumer = group_consumer(group)?;
    let mut list = TopicPartitionList::new();
    for (partition, offset, metadata) in offsets {
        let mut element = list.add_partition(topic, *partition);
        element.set_offset(Offset::Offset(*offset))?;
        element.set_metadata(metadata.clone());
    }
    consumer.commit(&list, CommitMode::Sync)?;
    drop(list);
    drop(consumer);
    Ok(())
}

/// The group's committed (offset, metadata) per partition `0..partitions`.
fn committed_with_metadata(group: &str, topic: &str, partitions: i32) -> TestResult<Vec<(Option<i64>, String)>> {
    let consumer = group_consumer(group)?;
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(wanted, KAFKA_TIMEOUT)?;
    let out = (0..partitions)
        .map(|p| match committed.find_partition(topic, p) {
            Some(e) => (
                match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                },
                e.metadata().to_string(),
            ),
            None => (None, String::new()),
        })
        .collect();
    // librdkafka hangs in rd_kafka_destroy when a consumer is dropped while a list it returned is alive.
    drop(committed);
    drop(consumer);
    Ok(out)
}

fn status(config: &Value, json: bool) -> TestResult<Finished> {
    let dir = TempDir::new("status-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec_pretty(config)?)?;
    let mut command = Command::new(relay_bin());
    command.arg("status").arg("--config").arg(&file).envs(relay_env());
    if json {
        command.arg("--json");
    }
    let finished = run_captured("kafka-lambda-relay status", command, PROCESS_TIMEOUT)?;
    if finished.code() != Some(0) {
        return Err(format!(
            "status exited with {:?}\n{}\n{}",
            finished.status,
            finished.stdout,
            finished.stderr_tail()
        )
        .into());
    }
    Ok(finished)
}

#[test]
fn status_on_tansu_shows_lag_and_time_lag_per_partition_and_changes_no_offset() -> TestResult {
    let topic = unique_name("status");
    let group = unique_name("group");
    create_topic(&tansu(), &topic, 3)?;
    // Ten records per partition, written (CreateTime) two minutes ago.
    let written_at_ms = (unix_seconds_now() - 120) * 1000;
    populate_topic_at(&tansu(), &topic, 3, 30, Some(written_at_ms), |i| format!("s{i}"))?;
    // Partition 0: an earlier run failed twice on the batch at offset 3 and kept that in the commit metadata.
    // Partition 1: committed up to 6. Partition 2: caught up.
    let retry = RetryState::new(3, 2).encode();
    commit_with_metadata(
        &group,
        &topic,
        &[(0, 3, retry.clone()), (1, 6, String::new()), (2, 10, String::new())],
    )?;
    let before = committed_with_metadata(&group, &topic, 3)?;
    assert_eq!(
        before[0],
        (Some(3), String::new()),
        "tansu 0.6.0 keeps the offset and answers no metadata (if this fails, it returns metadata now: assert \
         the Blocked state below, as tests/status_mock.rs does)"
    );

    let mapping = tansu_mapping("recording-target", &topic, &group);
    let config = json!({"Mappings": [mapping]});
    let started_s = unix_seconds_now();
    let report: Value = serde_json::from_str(status(&config, true)?.stdout.trim())?;
    let elapsed_s = (unix_seconds_now() - started_s + 2) as f64;

    let m = &report["Mappings"][0];
    assert_eq!(m["UUID"], mapping["UUID"]);
    assert_eq!(m["State"], "Enabled");
    assert_eq!(m["ConsumerGroupId"], group.as_str());
    assert_eq!(m["SumOffsetLag"], 7 + 4);
    let p: Vec<&Value> = m["Partitions"].as_array().ok_or("no Partitions")?.iter().collect();
    assert_eq!(p.len(), 3);
    let rows: Vec<(i64, Option<i64>, i64, i64)> = p
        .iter()
        .map(|p| {
            (
                p["Partition"].as_i64().unwrap_or(-1),
                p["CommittedOffset"].as_i64(),
                p["HighWatermark"].as_i64().unwrap_or(-1),
                p["Lag"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![(0, Some(3), 10, 7), (1, Some(6), 10, 4), (2, Some(10), 10, 0)]
    );
    // The blocked partition, as far as tansu allows: still at the blocked offset, lagging from there, with
    // no retry state (tansu returned none).
    assert!(p[0]["Blocked"].is_null(), "no metadata, no retry state: {}", p[0]);
    assert!(p[1]["Blocked"].is_null());
    for lagging in [p[0], p[1]] {
        assert_eq!(
            lagging["NextRecordTimestampMs"], written_at_ms,
            "the next unprocessed record's timestamp"
        );
        let time_lag = lagging["TimeLagSeconds"].as_f64().ok_or("no TimeLagSeconds")?;
        assert!(
            (120.0..120.0 + elapsed_s + 1.0).contains(&time_lag),
            "time lag {time_lag} s"
        );
    }
    assert_eq!(p[2]["TimeLagSeconds"], 0.0, "a caught-up partition has no time lag");

    // The table for a person, then: still the same offsets and metadata, nothing consumed or committed.
    let table = status(&config, false)?.stdout;
    assert!(table.contains(&format!("group {group}")), "{table}");
    assert!(table.contains("lag 11 record(s)"), "{table}");
    eprintln!("{table}");
    assert_eq!(
        committed_with_metadata(&group, &topic, 3)?,
        before,
        "status must not move or rewrite any offset"
    );
    Ok(())
}
