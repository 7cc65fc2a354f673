#![cfg(feature = "e2e")]
//! On-failure destinations through the real AWS SDK against `moto_server` (`RELAY_TEST_MOTO`): the record
//! each of SQS, SNS and S3 ends up holding, read back with the SDK, and the errors of missing
//! destinations.
//!
//! The endpoint reaches the SDK the way it does in production, through `AWS_ENDPOINT_URL`, read by
//! `aws-config`. Every test uses its own uniquely named queue, topic or bucket, so tests run in parallel
//! on one moto without a reset.

use std::sync::Once;

use kafka_lambda_relay::destination::{
    Condition, DestinationError, FailureRecord, GivenUp, OnFailureDestination, ResponseContext, SentTo,
    MAX_MESSAGE_BYTES,
};
use kafka_lambda_relay::event::EventSource;
use kafka_lambda_relay::kafka::{PartitionKey, Record, TimestampType};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:target";
const MSK_ARN: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/751d2973-a626-431c-9d4e-d7975eb44dd7-2";
const MAPPING: &str = "0b7c5e3a-6a55-4c1e-9a53-1f1d2c3b4a50";
/// Above AWS's 6 MB invocation payload limit once base64-encoded in an event.
const OVERSIZED_VALUE_BYTES: usize = 5_000_000;

fn moto() -> String {
    std::env::var("RELAY_TEST_MOTO")
        .expect("RELAY_TEST_MOTO must name a running moto_server, e.g. http://127.0.0.1:5000 (scripts/test.sh sets it)")
}

async fn sdk_config() -> aws_config::SdkConfig {
    static ENDPOINT: Once = Once::new();
    // Set once, before any test loads a config; std serializes its own environment access.
    ENDPOINT.call_once(|| std::env::set_var("AWS_ENDPOINT_URL", moto()));
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A failed batch: `partitions` partitions of `per_partition` records from offset 100.
fn batch(topic: &str, partitions: i32, per_partition: i64) -> Vec<Record> {
    let mut records = Vec::new();
    for partition in 0..partitions {
        for i in 0..per_partition {
            records.push(Record::new(
                PartitionKey::new(topic, partition),
                100 + i,
                1_700_000_000_000 + i * 1000,
                TimestampType::CreateTime,
                Some(format!("k{i}").into_bytes()),
                Some(format!("{{\"n\":{i}}}").into_bytes()),
                vec![("h".into(), vec![1, 200])],
            ));
        }
    }
    records
}

/// One record whose event alone is over 6 MB.
fn oversized(topic: &str) -> Vec<Record> {
    vec![Record::new(
        PartitionKey::new(topic, 2),
        77,
        1_700_000_123_456,
        TimestampType::LogAppendTime,
        None,
        Some(vec![b'x'; OVERSIZED_VALUE_BYTES]),
        vec![],
    )]
}

fn source(msk: bool) -> EventSource {
    EventSource {
        event_source: if msk { "aws:kafka" } else { "SelfManagedKafka" }.into(),
        event_source_arn: msk.then(|| MSK_ARN.to_string()),
        bootstrap_servers: "127.0.0.1:9092,127.0.0.1:9093".into(),
    }
}

fn given_up<'a>(records: &'a [Record], event: &'a [u8], condition: Condition, msk: bool) -> GivenUp<'a> {
    GivenUp {
        mapping_uuid: MAPPING,
        function_arn: FUNCTION_ARN,
        event_source_arn: msk.then_some(MSK_ARN),
        bootstrap_servers: "127.0.0.1:9092,127.0.0.1:9093",
        condition,
        approximate_invoke_count: if condition.uninvoked() { 0 } else { 3 },
        response: Some(ResponseContext {
            status_code: 200,
            executed_version: "$LATEST".into(),
            function_error: Some("Unhandled".into()),
        }),
        records,
        payload: event,
    }
}

/// Checks every field of a record read back from a destination against what was given up.
fn assert_record(
    json: &str,
    given_up: &GivenUp<'_>,
    request_id: &str,
) -> Result<FailureRecord, Box<dyn std::error::Error>> {
    let value: Value = serde_json::from_str(json)?;
    let context = &value["requestContext"];
    assert_eq!(context["requestId"], request_id);
    assert_eq!(context["functionArn"], FUNCTION_ARN);
    assert_eq!(context["condition"], given_up.condition.as_str());
    assert_eq!(context["approximateInvokeCount"], given_up.approximate_invoke_count);
    if given_up.condition.uninvoked() {
        assert_eq!(value["responseContext"], Value::Null);
    } else {
        assert_eq!(
            value["responseContext"],
            serde_json::json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})
        );
    }
    assert_eq!(value["version"], "1.0");
    let timestamp = value["timestamp"].as_str().ok_or("timestamp is a string")?;
    let written = time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)?;
    assert!(timestamp.ends_with('Z') && timestamp.len() == 24, "{timestamp}");
    assert!((time::OffsetDateTime::now_utc() - written).whole_minutes().abs() < 5, "{timestamp} is now");
    let info = &value["KafkaBatchInfo"];
    assert_eq!(info["batchSize"], given_up.records.len());
    assert_eq!(info["bootstrapServers"], given_up.bootstrap_servers);
    assert_eq!(info["payloadSize"], given_up.payload.len());
    match given_up.event_source_arn {
        Some(arn) => assert_eq!(info["eventSourceArn"], arn),
        None => assert_eq!(info.get("eventSourceArn"), Some(&serde_json::Value::Null)),
    }
    let first = &given_up.records[0];
    let last = given_up.records.iter().rfind(|r| r.key_partition == first.key_partition).ok_or("a last record")?;
    let partition = &info["recordsInfo"][first.key_partition.to_string()];
    assert_eq!(partition["firstRecordOffset"], first.offset.to_string());
    assert_eq!(partition["lastRecordOffset"], last.offset.to_string());
    let first_ts = time::OffsetDateTime::parse(
        partition["firstRecordTimestamp"].as_str().ok_or("a string")?,
        &time::format_description::well_known::Rfc3339,
    )?;
    assert_eq!((first_ts.unix_timestamp_nanos() / 1_000_000) as i64, first.timestamp_ms);
    Ok(serde_json::from_value(value)?)
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<(String, String), Box<dyn std::error::Error>> {
    let url = sqs.create_queue().queue_name(name).send().await?.queue_url.ok_or("a queue url")?;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await?;
    let arn = attributes
        .attributes
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
        .ok_or("a queue arn")?;
    Ok((url, arn))
}

/// Receives exactly `count` messages, waiting up to ten seconds.
async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    count: usize,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let output =
            sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).send().await?;
        bodies.extend(output.messages.unwrap_or_default().into_iter().filter_map(|m| m.body));
        if bodies.len() >= count {
            break;
        }
    }
    assert_eq!(bodies.len(), count, "messages on {url}");
    Ok(bodies)
}

#[tokio::test]
async fn sqs_receives_the_retry_record_and_the_oversized_record() -> TestResult {
    let config = sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let (url, arn) = create_queue(&sqs, &unique("dlq")).await?;
    let destination = OnFailureDestination::new(&arn, &config)?;

    let records = batch("orders", 2, 3);
    let event = source(false).encode(&records);
    let retry = given_up(&records, &event, Condition::RetryAttemptsExhausted, false);
    let sent = destination.send(&retry).await?;
    match &sent.location {
        SentTo::Sqs { queue_url, message_id } => {
            assert_eq!(queue_url, &url);
            assert!(!message_id.is_empty());
        }
        other => panic!("sent to {other:?}"),
    }
    let bodies = receive(&sqs, &url, 1).await?;
    let record = assert_record(&bodies[0], &retry, &sent.request_id)?;
    assert_eq!(record.payload, None, "SQS gets metadata only");
    assert_eq!(record.kafka_batch_info.records_info.0.len(), 2);

    let big = oversized("orders");
    let big_event = source(false).encode(&big);
    assert!(big_event.len() > 6_291_456);
    let too_large = given_up(&big, &big_event, Condition::MaximumPayloadSizeExceeded, false);
    let sent = destination.send(&too_large).await?;
    let bodies = receive(&sqs, &url, 1).await?;
    assert_record(&bodies[0], &too_large, &sent.request_id)?;
    assert!(bodies[0].len() < 2_000, "metadata only: {} bytes", bodies[0].len());
    Ok(())
}

/// An SNS topic with an SQS queue subscribed for raw delivery, so what was published is read back as is.
async fn topic_with_queue(config: &aws_config::SdkConfig) -> Result<(String, String), Box<dyn std::error::Error>> {
    let sns = aws_sdk_sns::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    let topic_arn = sns.create_topic().name(unique("alerts")).send().await?.topic_arn.ok_or("a topic arn")?;
    let (url, queue_arn) = create_queue(&sqs, &unique("alerts-reader")).await?;
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await?;
    Ok((topic_arn, url))
}

#[tokio::test]
async fn sns_delivers_the_retry_record_and_the_oversized_record() -> TestResult {
    let config = sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let (topic_arn, url) = topic_with_queue(&config).await?;
    let destination = OnFailureDestination::new(&topic_arn, &config)?;

    let records = batch("payments", 3, 2);
    let event = source(true).encode(&records);
    let retry = given_up(&records, &event, Condition::RetryAttemptsExhausted, true);
    let sent = destination.send(&retry).await?;
    assert!(
        matches!(&sent.location, SentTo::Sns { topic_arn: t, message_id } if t == &topic_arn && !message_id.is_empty())
    );
    let bodies = receive(&sqs, &url, 1).await?;
    let record = assert_record(&bodies[0], &retry, &sent.request_id)?;
    assert_eq!(record.payload, None);
    assert_eq!(record.kafka_batch_info.records_info.0.len(), 3);

    let big = oversized("payments");
    let big_event = source(true).encode(&big);
    let too_large = given_up(&big, &big_event, Condition::MaximumPayloadSizeExceeded, true);
    let sent = destination.send(&too_large).await?;
    let bodies = receive(&sqs, &url, 1).await?;
    assert_record(&bodies[0], &too_large, &sent.request_id)?;
    Ok(())
}

#[tokio::test]
async fn sns_gets_a_reduced_record_for_a_batch_spanning_thousands_of_partitions() -> TestResult {
    let config = sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let (topic_arn, url) = topic_with_queue(&config).await?;
    let destination = OnFailureDestination::new(&topic_arn, &config)?;

    let records = batch("a-topic-with-a-rather-long-name-to-fill-the-record", 3000, 1);
    let event = source(false).encode(&records);
    let retry = given_up(&records, &event, Condition::RetryAttemptsExhausted, false);
    let sent = destination.send(&retry).await?;
    assert!(sent.records_info_truncated);
    let bodies = receive(&sqs, &url, 1).await?;
    assert!(bodies[0].len() <= MAX_MESSAGE_BYTES, "{} bytes", bodies[0].len());
    let record = assert_record(&bodies[0], &retry, &sent.request_id)?;
    let info = &record.kafka_batch_info;
    assert_eq!(info.records_info_truncated, Some(true));
    assert_eq!(info.records_info_partition_count, Some(3000));
    assert!(info.records_info.0.len() > 100 && info.records_info.0.len() < 3000, "{}", info.records_info.0.len());
    Ok(())
}

#[tokio::test]
async fn s3_stores_both_records_with_the_exact_event_as_payload() -> TestResult {
    let config = sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
    let bucket = unique("failures");
    s3.create_bucket().bucket(&bucket).send().await?;
    let destination = OnFailureDestination::new(&format!("arn:aws:s3:::{bucket}"), &config)?;

    let records = batch("clicks", 2, 4);
    let big = oversized("clicks");
    let event = source(true).encode(&records);
    let big_event = source(true).encode(&big);
    let cases = [
        given_up(&records, &event, Condition::RetryAttemptsExhausted, true),
        given_up(&big, &big_event, Condition::MaximumPayloadSizeExceeded, true),
    ];
    for given_up in &cases {
        let sent = destination.send(given_up).await?;
        let SentTo::S3 { bucket: written_to, key } = &sent.location else { panic!("sent to {:?}", sent.location) };
        assert_eq!(written_to, &bucket);
        let first = &given_up.records[0];
        let prefix = format!("kafka-lambda-relay/{MAPPING}/{}/", first.key_partition);
        assert!(key.starts_with(&prefix), "{key}");
        assert!(key.contains(&format!("-{:020}-{}.json", first.offset, sent.request_id)), "{key}");
        let object = s3.get_object().bucket(&bucket).key(key).send().await?;
        let body = object.body.collect().await?.into_bytes();
        let record = assert_record(std::str::from_utf8(&body)?, given_up, &sent.request_id)?;
        let payload = record.payload.ok_or("S3 records carry the payload")?;
        assert_eq!(payload.as_bytes(), given_up.payload, "the exact event bytes");
        let event: aws_lambda_events::event::kafka::KafkaEvent = serde_json::from_str(&payload)?;
        let in_partition = given_up.records.iter().filter(|r| r.key_partition == first.key_partition).count();
        assert_eq!(event.records[&first.key_partition.to_string()].len(), in_partition);
    }
    let listed = s3.list_objects_v2().bucket(&bucket).prefix(format!("kafka-lambda-relay/{MAPPING}/")).send().await?;
    assert_eq!(listed.key_count, Some(2));
    Ok(())
}

fn assert_not_retryable(error: &DestinationError, code: &str) {
    assert_eq!(error.error_code(), code, "{error}");
    assert!(!error.retryable(), "{code} needs a fix, not a retry");
    assert!(error.to_string().contains(code), "{error}");
}

/// Sends a small retry record to `arn`, which names nothing that exists.
async fn send_to_missing(arn: &str) -> Result<DestinationError, Box<dyn std::error::Error>> {
    let config = sdk_config().await;
    let destination = OnFailureDestination::new(arn, &config)?;
    let records = batch("orders", 1, 1);
    let event = source(false).encode(&records);
    let result = destination.send(&given_up(&records, &event, Condition::RetryAttemptsExhausted, false)).await;
    Ok(result.expect_err("the destination does not exist"))
}

#[tokio::test]
async fn a_missing_queue_fails_with_the_aws_code() -> TestResult {
    let error = send_to_missing(&format!("arn:aws:sqs:us-east-1:123456789012:{}", unique("missing"))).await?;
    assert!(matches!(error, DestinationError::QueueUrl { .. }), "{error}");
    assert_not_retryable(&error, "AWS.SimpleQueueService.NonExistentQueue");
    Ok(())
}

#[tokio::test]
async fn a_missing_topic_fails_with_the_aws_code() -> TestResult {
    let error = send_to_missing(&format!("arn:aws:sns:us-east-1:123456789012:{}", unique("missing"))).await?;
    assert!(matches!(error, DestinationError::Publish { .. }), "{error}");
    assert_not_retryable(&error, "NotFound");
    Ok(())
}

#[tokio::test]
async fn a_missing_bucket_fails_with_the_aws_code() -> TestResult {
    let error = send_to_missing(&format!("arn:aws:s3:::{}", unique("missing"))).await?;
    assert!(matches!(error, DestinationError::PutObject { .. }), "{error}");
    assert_not_retryable(&error, "NoSuchBucket");
    Ok(())
}
