//! `status` on an in-process Kafka: a partition blocked by an earlier run's retry state, a lagging one and a
//! caught-up one, with their time lags; and nothing in the group changes (offsets and metadata).
//! `tests/e2e_status.rs` runs the command against tansu.

mod common;

use std::time::Duration;

use kafka_lambda_relay::commit::RetryState;
use kafka_lambda_relay::status::status;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use common::*;

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// The group's (committed offset, metadata) for partitions `0..partitions`.
fn committed_with_metadata(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<(Option<i64>, String)> {
    let consumer = group_consumer(bootstrap, group);
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let list = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .expect("committed offsets");
    let out = (0..partitions)
        .map(|p| match list.find_partition(topic, p) {
            Some(e) => (
                if let Offset::Offset(n) = e.offset() {
                    Some(n)
                } else {
                    None
                },
                e.metadata().to_string(),
            ),
            None => (None, String::new()),
        })
        .collect();
    // librdkafka hangs destroying a consumer while a list it returned is alive.
    drop(list);
    drop(consumer);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_lag_time_lag_and_blocked_state_without_moving_the_group() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group) = (unique_name("t"), unique_name("g"));
    h.kafka.create_topic(&topic, 3)?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    // Records of partition p, offset i written (i + 1) minutes before now.
    for p in 0..3 {
        for i in 0..10i64 {
            let written = now_ms - (10 - i) * 60_000;
            h.kafka
                .produce_at(&topic, p, None, Some(format!("{p}:{i}").as_bytes()), Some(written))?;
        }
    }
    h.kafka.flush()?;
    let retry = RetryState::new(4, 3).encode();
    {
        let consumer = group_consumer(h.kafka.bootstrap_servers(), &group);
        let mut list = TopicPartitionList::new();
        for (p, offset, metadata) in [(0, 4, retry.clone()), (1, 7, String::new()), (2, 10, String::new())] {
            let mut element = list.add_partition(&topic, p);
            element.set_offset(Offset::Offset(offset))?;
            element.set_metadata(metadata);
        }
        consumer.commit(&list, CommitMode::Sync)?;
    }
    let before = committed_with_metadata(h.kafka.bootstrap_servers(), &group, &topic, 3);
    assert_eq!(before[0], (Some(4), retry.clone()));

    let cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        "target",
        &group,
        serde_json::json!({}),
    );
    let report = status(&cfg.mappings[0], &NoSecrets, now_ms).await;

    assert_eq!(report.state, "Enabled", "{report:?}");
    // What a person sees (the README's example comes from here).
    eprintln!("{}", kafka_lambda_relay::status::StatusReport { mappings: vec![report.clone()] }.table());
    let rows: Vec<(i32, Option<i64>, i64, i64)> = report
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed_offset, p.high_watermark, p.lag))
        .collect();
    assert_eq!(
        rows,
        vec![(0, Some(4), 10, 6), (1, Some(7), 10, 3), (2, Some(10), 10, 0)]
    );
    let blocked = report.partitions[0]
        .blocked
        .as_ref()
        .ok_or("partition 0 is not reported blocked")?;
    assert_eq!((blocked.offset, blocked.attempts), (4, 3));
    assert!(report.partitions[1].blocked.is_none());
    // Record 4 was written 6 minutes ago, record 7 three minutes ago.
    let time_lags: Vec<Option<f64>> = report.partitions.iter().map(|p| p.time_lag_seconds).collect();
    assert_eq!(time_lags, vec![Some(360.0), Some(180.0), Some(0.0)]);
    assert_eq!(report.sum_offset_lag, 9);
    assert_eq!(report.max_time_lag_seconds, Some(360.0));

    assert_eq!(
        committed_with_metadata(h.kafka.bootstrap_servers(), &group, &topic, 3),
        before,
        "status moved the group"
    );
    Ok(())
}
