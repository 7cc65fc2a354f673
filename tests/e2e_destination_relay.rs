#![cfg(feature = "e2e")]
//! The relay with a real on-failure destination (SQS on moto_server): while the queue does not exist,
//! nothing is committed past the given-up record and the report says why; once the queue exists, the
//! invocation record goes out and the offsets are committed.

mod common;

use std::sync::Arc;

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::destination::OnFailureDestination;
use kafka_lambda_relay::invoke::server::{handler, Reply};
use kafka_lambda_relay::relay::FailureSink;
use common::*;

async fn moto_config() -> aws_config::SdkConfig {
    let moto = std::env::var("RELAY_TEST_MOTO").expect("RELAY_TEST_MOTO names moto_server (scripts/test.sh sets it)");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_for_a_missing_queue_and_go_out_once_it_exists() -> TestResult {
    let mut h = Harness::start().await?;
    let (topic, group, function, queue) = (unique_name("t"), unique_name("g"), unique_name("fn"), unique_name("dlq"));
    h.seed(&topic, 1, 3)?;
    h.register(&function, handler(|_| async { Reply::unhandled("Boom", "always fails") }));
    let sdk = moto_config().await;
    let sink_sdk = sdk.clone();
    h.services.sinks = Arc::new(move |arn: &str| {
        OnFailureDestination::new(arn, &sink_sdk).map(|d| Arc::new(d) as Arc<dyn FailureSink>)
    });
    let arn = format!("arn:aws:sqs:us-east-1:123456789012:{queue}");
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "MaximumRetryAttempts": 0, "MaximumBatchingWindowInSeconds": 1,
        "DestinationConfig": {"OnFailure": {"Destination": arn}}}));

    let report = run_all(&cfg, &h.services, &bounded(5)).await;
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(0)], "nothing committed while the queue is missing");
    let blocked = report.mappings[0].partitions[0].blocked.clone().expect("the partition waits");
    assert!(blocked.reason.contains("NonExistentQueue"), "{}", blocked.reason);

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs.create_queue().queue_name(&queue).send().await?.queue_url().ok_or("no url")?.to_string();
    let report = run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(report.mappings[0].counts.sent_to_destination, 3);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);

    let messages = sqs.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(1).send().await?;
    let bodies: Vec<serde_json::Value> =
        messages.messages().iter().map(|m| serde_json::from_str(m.body().unwrap_or("null"))).collect::<Result<_, _>>()?;
    assert_eq!(bodies.len(), 1, "one invocation record for the one given-up batch");
    let record = &bodies[0];
    assert_eq!(record["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    let info = &record["KafkaBatchInfo"]["recordsInfo"][format!("{topic}-0")];
    assert_eq!((info["firstRecordOffset"].as_str(), info["lastRecordOffset"].as_str()), (Some("0"), Some("2")));
    assert_eq!(record["KafkaBatchInfo"]["batchSize"], 3);
    Ok(())
}
