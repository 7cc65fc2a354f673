//! A Kafka topic as on-failure destination (`kafka://<topic>`) on the in-process cluster: given-up records
//! land in the failure topic on the mapping's own cluster, one message per record, and are committed only
//! then. (The failure topic missing or refusing writes is covered on tansu, tests/e2e_kafka_destination.rs.)

mod common;

use std::time::Duration;

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::{handler, Reply};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use common::*;

fn read_values(bootstrap: &str, topic: &str, expected: usize) -> TestResult<Vec<serde_json::Value>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", unique_name("reader")).create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < expected && std::time::Instant::now() < until {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(message?.payload().ok_or("no value")?)?);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_lands_in_the_failure_topic_one_message_per_record_before_it_commits() -> TestResult {
    let h = Harness::start().await?;
    let (topic, failed, group, function) = (unique_name("orders"), unique_name("failed"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 3)?;
    h.kafka.create_topic(&failed, 1)?;
    h.register(&function, handler(|_| async { Reply::unhandled("Boom", "always fails") }));
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "MaximumRetryAttempts": 1, "BatchSize": 10, "MaximumBatchingWindowInSeconds": 1,
        "DestinationConfig": {"OnFailure": {"Destination": format!("kafka://{failed}")}}}));

    let report = run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(report.mappings[0].counts.sent_to_destination, 3);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);
    assert!(h.destination.written.lock().unwrap().is_empty(), "kafka:// is not built by the SQS/SNS/S3 sink factory");

    let values = read_values(h.kafka.bootstrap_servers(), &failed, 3)?;
    let mut offsets: Vec<&str> = values.iter().filter_map(|v| v["KafkaBatchInfo"]["recordInfo"]["offset"].as_str()).collect();
    offsets.sort();
    assert_eq!(offsets, ["0", "1", "2"], "one message per record");
    for value in &values {
        assert_eq!(value["requestContext"]["condition"], "RetryAttemptsExhausted");
        assert_eq!(value["requestContext"]["approximateInvokeCount"], 2);
        assert_eq!(value["KafkaBatchInfo"]["batchSize"], 3);
        let offset: i64 = value["KafkaBatchInfo"]["recordInfo"]["offset"].as_str().ok_or("offset")?.parse()?;
        assert_eq!(value["payload"]["records"][format!("{topic}-0")][0]["offset"], offset);
    }
    Ok(())
}
