//! `redrive` on the in-process mock cluster (fast tier): offsets below a partition's log start are reported
//! as deleted by retention (the mock keeps at most 5 MiB per partition, so older records really are gone),
//! and a Kafka failure topic is redriven and checkpointed only past what succeeded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kafka_lambda_relay::auth::KafkaSecurity;
use kafka_lambda_relay::event::EventSource;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{handler, local_sdk_config, LocalLambda, Reply};
use kafka_lambda_relay::kafka::mock::MockKafka;
use kafka_lambda_relay::kafka::{PartitionKey, Record, TimestampType};
use kafka_lambda_relay::redrive::kafka::read_ranges;
use kafka_lambda_relay::redrive::parse::OffsetRange;
use kafka_lambda_relay::redrive::{self, MissingReason, Options, Source};
use serde_json::json;

#[test]
fn offsets_below_the_log_start_are_reported_as_deleted_by_retention() -> TestResult {
    let kafka = MockKafka::start(1)?;
    kafka.create_topic("t", 1)?;
    for i in 0..3 {
        kafka.produce("t", 0, None, Some(format!("early-{i}").as_bytes()))?;
    }
    let filler = vec![b'x'; 512 * 1024];
    for _ in 0..16 {
        kafka.produce("t", 0, None, Some(&filler))?;
    }
    kafka.flush()?;
    let mapping = config(kafka.bootstrap_servers(), "t", "f", "g", json!({})).mappings[0].clone();
    let ranges = [OffsetRange { key: PartitionKey::new("t", 0), first: 0, last: 18 }];
    let read = read_ranges(&mapping, &KafkaSecurity::plaintext(), &ranges)?;
    assert_eq!(read.missing.len(), 1, "{:?}", read.missing);
    let missing = &read.missing[0];
    assert_eq!((missing.first_offset, missing.reason), (0, MissingReason::DeletedByRetention));
    assert!(missing.last_offset >= 2, "the early records are gone: {missing:?}");
    let offsets: Vec<i64> = read.records.iter().map(|r| r.offset).collect();
    let want: Vec<i64> = (missing.last_offset + 1..=18).collect();
    assert_eq!(offsets, want, "everything after the log start is read back");
    Ok(())
}

fn failure_message(source: &EventSource, record: &Record) -> String {
    let payload: serde_json::Value = serde_json::from_slice(&source.encode(std::slice::from_ref(record))).unwrap();
    json!({
        "requestContext": {"requestId": "r", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
            "condition": "RetriesExhausted", "approximateInvokeCount": 1},
        "responseContext": null, "version": "1.0", "timestamp": "2026-11-30T12:00:00.000Z",
        "KafkaBatchInfo": {"batchSize": 1, "bootstrapServers": source.bootstrap_servers, "payloadSize": 1,
            "recordInfo": {"offset": record.offset.to_string(), "timestamp": "1970-01-01T00:00:00.005Z"}},
        "payload": payload
    })
    .to_string()
}

/// The target fails the record at source offset 1 only: the group commits past offset 0 of the failure
/// topic and no further, so the kept record (and the one after it) is sent again next time, and a
/// `--partition` filter that leaves a message out keeps it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_topic_commits_only_past_what_succeeded() -> TestResult {
    let kafka = MockKafka::start(1)?;
    kafka.create_topic("dlt", 1)?;
    let source = EventSource {
        event_source: "SelfManagedKafka".into(),
        event_source_arn: None,
        bootstrap_servers: "b:9092".into(),
    };
    let records: Vec<Record> = (0..3)
        .map(|i| {
            Record::new(
                PartitionKey::new("orders", 0),
                i,
                5,
                TimestampType::CreateTime,
                Some(vec![i as u8]),
                Some(b"v".to_vec()),
                vec![],
            )
        })
        .collect();
    for record in &records {
        kafka.produce("dlt", 0, record.key.as_deref(), Some(failure_message(&source, record).as_bytes()))?;
    }
    kafka.flush()?;
    let lambda = LocalLambda::start().await?;
    lambda.register(
        "target",
        Duration::from_secs(5),
        handler(|invocation| async move {
            let text = String::from_utf8_lossy(&invocation.payload).to_string();
            if text.contains("\"offset\":1,") {
                Reply::unhandled("Poison", "offset 1")
            } else {
                Reply::success("{}")
            }
        }),
    );
    let invoker = Arc::new(LambdaInvoker::new(&local_sdk_config(&lambda.endpoint()).await));
    let services = redrive::Services {
        invoker,
        sdk_config: local_sdk_config(&lambda.endpoint()).await,
        secrets: Arc::new(NoSecrets),
    };
    let mapping = config(kafka.bootstrap_servers(), "orders", "target", "g", json!({})).mappings[0].clone();
    let options = Options {
        target_timeout: Some(Duration::from_secs(5)),
        group: Some("redrive".into()),
        ..Options::new(Source::Kafka { topic: "dlt".into() })
    };

    let summary = redrive::redrive(&mapping, &options, &services).await?;
    assert_eq!((summary.batches_found, summary.batches_redriven, summary.batches_failed), (3, 2, 1), "{summary:#?}");
    assert_eq!(
        committed_offsets(kafka.bootstrap_servers(), "redrive", "dlt", 1)?,
        vec![Some(1)],
        "not past the failed one"
    );

    let dry = Options { dry_run: true, ..options.clone() };
    let summary = redrive::redrive(&mapping, &dry, &services).await?;
    assert_eq!((summary.batches_found, summary.would_send.len(), summary.removed), (2, 2, 0), "{summary:#?}");
    assert_eq!(
        summary.would_send[0].event,
        serde_json::from_slice::<serde_json::Value>(&source.encode(&records[1..2]))?
    );
    assert_eq!(
        committed_offsets(kafka.bootstrap_servers(), "redrive", "dlt", 1)?,
        vec![Some(1)],
        "a dry run commits nothing"
    );

    let filtered =
        Options { filters: redrive::Filters { partitions: vec![7], ..Default::default() }, ..options.clone() };
    let summary = redrive::redrive(&mapping, &filtered, &services).await?;
    assert_eq!(
        (summary.batches_skipped_by_filter, summary.records_skipped_by_filter, summary.kept),
        (2, 2, 2),
        "{summary:#?}"
    );
    assert_eq!(lambda.invocation_count("target"), 3, "nothing sent for filtered records");
    assert_eq!(committed_offsets(kafka.bootstrap_servers(), "redrive", "dlt", 1)?, vec![Some(1)]);
    Ok(())
}

/// With `ReportBatchItemFailures`, a `batchItemFailures` answer fails the redrive of that batch (as the relay
/// would retry it): nothing is committed. `--rate` spaces the invocations out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_response_is_a_failure_and_rate_spaces_invocations() -> TestResult {
    let kafka = MockKafka::start(1)?;
    kafka.create_topic("dlt", 1)?;
    let source = EventSource {
        event_source: "SelfManagedKafka".into(),
        event_source_arn: None,
        bootstrap_servers: "b:9092".into(),
    };
    let records: Vec<Record> = (0..3)
        .map(|i| {
            Record::new(
                PartitionKey::new("orders", 0),
                i,
                5,
                TimestampType::CreateTime,
                None,
                Some(b"v".to_vec()),
                vec![],
            )
        })
        .collect();
    for record in &records {
        kafka.produce("dlt", 0, None, Some(failure_message(&source, record).as_bytes()))?;
    }
    kafka.flush()?;
    let lambda = LocalLambda::start().await?;
    lambda.register(
        "target",
        Duration::from_secs(5),
        handler(|invocation| async move {
            let text = String::from_utf8_lossy(&invocation.payload).to_string();
            if text.contains("\"offset\":0,") {
                Reply::json(&json!({"batchItemFailures": [{"itemIdentifier": {"partition": "orders-0", "offset": 0}}]}))
            } else {
                Reply::success("{}")
            }
        }),
    );
    let invoker = Arc::new(LambdaInvoker::new(&local_sdk_config(&lambda.endpoint()).await));
    let services = redrive::Services {
        invoker,
        sdk_config: local_sdk_config(&lambda.endpoint()).await,
        secrets: Arc::new(NoSecrets),
    };
    let mapping = config(
        kafka.bootstrap_servers(),
        "orders",
        "target",
        "g",
        json!({"FunctionResponseTypes": ["ReportBatchItemFailures"]}),
    )
    .mappings[0]
        .clone();
    let options = Options {
        target_timeout: Some(Duration::from_secs(5)),
        group: Some("redrive".into()),
        rate: Some(5.0),
        ..Options::new(Source::Kafka { topic: "dlt".into() })
    };
    let started = std::time::Instant::now();
    let summary = redrive::redrive(&mapping, &options, &services).await?;
    let elapsed = started.elapsed();
    assert_eq!((summary.batches_failed, summary.batches_redriven, summary.removed), (1, 2, 2), "{summary:#?}");
    assert!(summary.failures[0].reason.contains("batchItemFailures"), "{:?}", summary.failures);
    assert_eq!(
        committed_offsets(kafka.bootstrap_servers(), "redrive", "dlt", 1)?,
        vec![None],
        "not past the first message"
    );
    // Three invocations at 5 per second: the second and third each wait 200 ms.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    Ok(())
}
