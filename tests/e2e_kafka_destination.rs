#![cfg(feature = "e2e")]
//! On tansu (and moto's S3): a Kafka topic as on-failure destination (`kafka://<topic>`), and the opt-in
//! large-record offload (`RelayExtensions.LargeRecordOffload`).
//!
//! - While the failure topic does not exist, nothing is committed past the given-up records; once it
//!   exists, the next run writes one message per record, in AWS's format, and commits.
//! - A record whose event exceeds 6 MB is delivered as a pointer to an S3 object holding its value byte
//!   for byte; the same mapping without the setting gives it up with `MaximumPayloadSizeExceeded`; while
//!   the bucket is missing nothing is committed.
//!
//! tansu 0.6.0 accepts records of 6 MB and more but never serves them back to a fetch (measured: 5 MB
//! round-trips, 6 MB and 10 MB do not), so the Kafka side uses a 5 MB record (whose event, base64, is
//! 6.7 MB: over AWS's limit); the S3 side round-trips a 10 MB value through moto.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::config::RelayConfig;
use kafka_lambda_relay::destination::offload::{LargeRecordOffload, Pointer, POINTER_HEADER};
use kafka_lambda_relay::destination::OnFailureDestination;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{handler, local_sdk_config, LocalLambda, Reply};
use kafka_lambda_relay::relay::{FailureSink, Services};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use common::*;

async fn moto_sdk() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto())
        .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

#[allow(clippy::result_large_err)] // the sink factory's error type is the relay's DestinationError
/// The in-process Lambda, and services whose SQS/SNS/S3 destinations are on moto (a kafka:// destination
/// is built on the mapping's own cluster instead).
async fn services() -> TestResult<(LocalLambda, Services)> {
    let lambda = LocalLambda::start().await?;
    let sdk = local_sdk_config(&lambda.endpoint()).await;
    let moto = moto_sdk().await;
    let services = Services {
        invoker: Arc::new(LambdaInvoker::new(&sdk)),
        sinks: Arc::new(move |arn: &str| OnFailureDestination::new(arn, &moto).map(|d| Arc::new(d) as Arc<dyn FailureSink>)),
        secrets: Arc::new(NoSecrets),
    };
    Ok((lambda, services))
}

/// One record to produce: key, value, one header.
type Produce<'a> = (Option<&'a [u8]>, Vec<u8>, Option<(&'a str, &'a [u8])>);

async fn produce(topic: &str, records: &[Produce<'_>]) -> TestResult {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu())
        .set("message.max.bytes", "16000000")
        .create()?;
    for (key, value, header) in records {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value.as_slice()).partition(0);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if let Some((name, value)) = header {
            record = record.headers(OwnedHeaders::new().insert(Header { key: name, value: Some(*value) }));
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Every message of partitions 0..partitions of `topic`, read from the start.
fn read_topic(topic: &str, partitions: i32, expected: usize) -> TestResult<Vec<rdkafka::message::OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu())
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < expected && std::time::Instant::now() < until {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            out.push(message?.detach());
        }
    }
    Ok(out)
}

/// `create_topic` runs its own runtime: off this one's worker.
fn new_topic(name: &str, partitions: i32) -> TestResult {
    tokio::task::block_in_place(|| create_topic(&tansu(), name, partitions))
}

fn committed(group: &str, topic: &str) -> TestResult<Vec<Option<i64>>> {
    committed_offsets(&tansu(), group, topic, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_destination_commits_nothing_while_the_failure_topic_is_missing_then_writes_aws_records() -> TestResult {
    // librdkafka gives up on an unknown topic's messages after this (MessageTimedOut), and the relay retries.
    std::env::set_var("RELAY_KAFKA_DESTINATION_TIMEOUT", "2");
    let (lambda, services) = services().await?;
    let (topic, failed, group, function) = (unique_name("src"), unique_name("failed"), unique_name("g"), unique_name("fn"));
    new_topic(&topic, 1)?;
    produce(&topic, &[
        (Some("customer-1".as_bytes()), b"{\"n\":0}".to_vec(), Some(("trace", "t-0".as_bytes()))),
        (None, b"{\"n\":1}".to_vec(), None),
    ])
    .await?;
    lambda.register(&function, Duration::from_secs(5), handler(|_| async { Reply::unhandled("Boom", "always fails") }));
    let cfg = config(&tansu(), &topic, &function, &group, serde_json::json!({
        "MaximumRetryAttempts": 0, "BatchSize": 10, "MaximumBatchingWindowInSeconds": 1,
        "DestinationConfig": {"OnFailure": {"Destination": format!("kafka://{failed}")}}}));

    let report = run_all(&cfg, &services, &bounded(8)).await;
    assert_eq!(committed(&group, &topic)?, vec![Some(0)], "nothing committed past the given-up records while the failure topic is missing");
    assert_eq!(report.mappings[0].counts.sent_to_destination, 0);
    let blocked = report.mappings[0].partitions[0].blocked.clone().expect("the partition waits for the destination");
    assert!(blocked.reason.contains("MessageTimedOut"), "{}", blocked.reason);

    new_topic(&failed, 2)?;
    let report = run_all(&cfg, &services, &until_idle()).await;
    assert_eq!(report.mappings[0].counts.sent_to_destination, 2);
    assert_eq!(committed(&group, &topic)?, vec![Some(2)], "committed once the broker acknowledged both messages");

    let messages = read_topic(&failed, 2, 2)?;
    assert_eq!(messages.len(), 2, "one message per failed record");
    let mut seen = Vec::new();
    for message in &messages {
        let value: serde_json::Value = serde_json::from_slice(message.payload().ok_or("no value")?)?;
        assert_eq!(value["requestContext"]["condition"], "RetryAttemptsExhausted");
        assert_eq!(value["requestContext"]["approximateInvokeCount"], 1);
        assert_eq!(value["responseContext"]["functionError"], "Unhandled");
        assert_eq!(value["version"], "1.0");
        assert_eq!(value["KafkaBatchInfo"]["batchSize"], 2);
        assert_eq!(value["KafkaBatchInfo"]["bootstrapServers"], tansu());
        let offset = value["KafkaBatchInfo"]["recordInfo"]["offset"].as_str().ok_or("no offset")?.to_string();
        let payload = &value["payload"];
        assert_eq!(payload["eventSource"], "SelfManagedKafka");
        let records = payload["records"][format!("{topic}-0")].as_array().ok_or("no records")?;
        assert_eq!(records.len(), 1, "the payload holds this record only");
        assert_eq!(records[0]["offset"].as_i64().map(|o| o.to_string()), Some(offset.clone()));
        assert_eq!(value["KafkaBatchInfo"]["payloadSize"], serde_json::to_vec(payload)?.len());
        assert!(message.headers().is_none(), "AWS documents no message headers");
        seen.push((offset, message.key().map(<[u8]>::to_vec), records[0]["value"].clone(), records[0]["headers"].clone()));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let b64 = |s: &str| serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(s));
    assert_eq!(seen[0], ("0".into(), Some(b"customer-1".to_vec()), b64("{\"n\":0}"), serde_json::json!([{"trace": [116, 45, 48]}])));
    assert_eq!(seen[1], ("1".into(), None, b64("{\"n\":1}"), serde_json::json!([])));
    std::env::remove_var("RELAY_KAFKA_DESTINATION_TIMEOUT");
    Ok(())
}

async fn moto_s3() -> aws_sdk_s3::Client {
    let sdk = moto_sdk().await;
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build())
}

/// A value whose every byte depends on its position, so a shifted or truncated copy never compares equal.
fn large_value(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn s3_bytes(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> TestResult<Vec<u8>> {
    Ok(s3.get_object().bucket(bucket).key(key).send().await?.body.collect().await?.into_bytes().to_vec())
}

/// Every invocation record an S3 destination bucket holds.
async fn destination_records(s3: &aws_sdk_s3::Client, bucket: &str) -> TestResult<Vec<serde_json::Value>> {
    let listed = s3.list_objects_v2().bucket(bucket).send().await?;
    let mut out = Vec::new();
    for key in listed.contents().iter().filter_map(|o| o.key()) {
        out.push(serde_json::from_slice(&s3_bytes(s3, bucket, key).await?)?);
    }
    Ok(out)
}

/// The [`Pointer`] in an event record's `value`.
fn decode_pointer(record: &serde_json::Value) -> TestResult<Pointer> {
    let value = base64::engine::general_purpose::STANDARD.decode(record["value"].as_str().ok_or("no value")?)?;
    Ok(serde_json::from_slice(&value)?)
}

/// A topic holding a 5 MB record (offset 0) and a small one (offset 1), a bucket for large records, and a
/// target that succeeds.
struct LargeRecordCase {
    lambda: LocalLambda,
    services: Services,
    s3: aws_sdk_s3::Client,
    topic: String,
    bucket: String,
    function: String,
    value: Vec<u8>,
}

impl LargeRecordCase {
    async fn start() -> TestResult<Self> {
        let (lambda, services) = services().await?;
        let (topic, bucket, function) = (unique_name("big"), unique_name("bucket"), unique_name("fn"));
        new_topic(&topic, 1)?;
        // 5,000,000 bytes: its event (base64) is 6.7 MB, over AWS's 6 MB limit; tansu serves it back.
        let value = large_value(5_000_000);
        let records = [(Some("k".as_bytes()), value.clone(), Some(("h", "v".as_bytes()))), (None, b"small".to_vec(), None)];
        produce(&topic, &records).await?;
        lambda.register(&function, Duration::from_secs(5), handler(|_| async { Reply::success("{}") }));
        Ok(Self { lambda, services, s3: moto_s3().await, topic, bucket, function, value })
    }

    /// A mapping of the topic to `function`, with the offload when `offload`, plus `extra` fields.
    fn mapping(&self, function: &str, group: &str, offload: bool, extra: serde_json::Value) -> RelayConfig {
        let mut m = serde_json::json!({"BatchSize": 10, "MaximumBatchingWindowInSeconds": 1});
        if offload {
            m["RelayExtensions"] = serde_json::json!({"LargeRecordOffload": {"Bucket": self.bucket}});
        }
        for (k, v) in extra.as_object().expect("object") {
            m[k] = v.clone();
        }
        config(&tansu(), &self.topic, function, group, m)
    }

    /// Without the setting: AWS's behaviour, the record is given up uninvoked (here to an S3 destination).
    async fn given_up_without_the_setting(&self) -> TestResult {
        let (group, dlq) = (unique_name("g"), unique_name("dlq"));
        self.s3.create_bucket().bucket(&dlq).send().await?;
        let to_dlq = serde_json::json!({"DestinationConfig": {"OnFailure": {"Destination": format!("arn:aws:s3:::{dlq}")}}});
        let report = run_all(&self.mapping(&self.function, &group, false, to_dlq), &self.services, &until_idle()).await;
        assert_eq!((report.mappings[0].counts.sent_to_destination, report.mappings[0].counts.delivered), (1, 1));
        assert_eq!(committed(&group, &self.topic)?, vec![Some(2)]);
        let invoked: Vec<(i32, i64)> =
            self.lambda.invocations(&self.function).iter().flat_map(|i| event_records(&i.payload)).collect();
        assert_eq!(invoked, vec![(0, 1)], "only the small record reached the function");
        let written = destination_records(&self.s3, &dlq).await?;
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0]["requestContext"]["condition"], "MaximumPayloadSizeExceeded");
        assert_eq!(written[0]["KafkaBatchInfo"]["recordsInfo"][format!("{}-0", self.topic)]["firstRecordOffset"], "0");
        Ok(())
    }

    /// With the setting: nothing committed or invoked while the bucket is missing; once it exists, the object
    /// is written, the pointer event invoked, and the offsets committed.
    async fn delivered_as_a_pointer_once_the_bucket_exists(&self) -> TestResult {
        let group = unique_name("g");
        let cfg = self.mapping(&self.function, &group, true, serde_json::json!({}));
        let before = self.lambda.invocation_count(&self.function);
        let report = run_all(&cfg, &self.services, &bounded(6)).await;
        assert!(report.mappings[0].counts.polled >= 1, "the record was read");
        let nothing = "nothing committed past the large record while its object cannot be written";
        assert_eq!(committed(&group, &self.topic)?, vec![Some(0)], "{nothing}");
        assert_eq!(self.lambda.invocation_count(&self.function), before, "no pointer event before the object exists");

        self.s3.create_bucket().bucket(&self.bucket).send().await?;
        run_all(&cfg, &self.services, &until_idle()).await;
        assert_eq!(committed(&group, &self.topic)?, vec![Some(2)]);
        let event: serde_json::Value = serde_json::from_slice(&self.lambda.invocations(&self.function)[before].payload)?;
        let record = &event["records"][format!("{}-0", self.topic)][0];
        assert_eq!(record["offset"], 0);
        assert_eq!(record["key"], base64::engine::general_purpose::STANDARD.encode("k"));
        assert_eq!(record["headers"], serde_json::json!([{"h": [118]}, {POINTER_HEADER: [115, 51]}]));
        let pointer = decode_pointer(record)?;
        assert_eq!((pointer.bucket.as_str(), pointer.size), (self.bucket.as_str(), self.value.len()));
        let object = s3_bytes(&self.s3, &pointer.bucket, &pointer.key).await?;
        assert!(object == self.value, "the object round-trips byte for byte ({} bytes)", object.len());
        Ok(())
    }

    /// A target that keeps failing: after its retries the record goes to the destination as its pointer too.
    async fn handed_off_as_its_pointer(&self) -> TestResult {
        let (failing, group, dlq) = (unique_name("fn"), unique_name("g"), unique_name("dlq"));
        self.lambda.register(&failing, Duration::from_secs(5), handler(|_| async { Reply::unhandled("Boom", "always fails") }));
        self.s3.create_bucket().bucket(&dlq).send().await?;
        let extra = serde_json::json!({"MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnFailure": {"Destination": format!("arn:aws:s3:::{dlq}")}}});
        let report = run_all(&self.mapping(&failing, &group, true, extra), &self.services, &until_idle()).await;
        assert_eq!(report.mappings[0].counts.sent_to_destination, 2);
        assert_eq!(committed(&group, &self.topic)?, vec![Some(2)]);
        let mut payloads = Vec::new();
        for written in destination_records(&self.s3, &dlq).await? {
            assert_eq!(written["requestContext"]["condition"], "RetryAttemptsExhausted");
            let payload: serde_json::Value = serde_json::from_str(written["payload"].as_str().ok_or("payload")?)?;
            payloads.push(payload["records"][format!("{}-0", self.topic)][0].clone());
        }
        payloads.sort_by_key(|r| r["offset"].as_i64());
        assert_eq!(payloads.len(), 2, "{payloads:?}");
        assert_eq!(payloads[0]["headers"][1], serde_json::json!({POINTER_HEADER: [115, 51]}), "handed off as its pointer");
        let pointer = decode_pointer(&payloads[0])?;
        assert_eq!((pointer.bucket.as_str(), pointer.size), (self.bucket.as_str(), self.value.len()));
        assert!(s3_bytes(&self.s3, &pointer.bucket, &pointer.key).await? == self.value, "the pointer names the stored value");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_record_over_6_mb_is_delivered_as_an_s3_pointer_only_with_the_relay_extension() -> TestResult {
    // The relay's own S3 client finds moto through the standard variable (path-style when it is set).
    std::env::set_var("AWS_ENDPOINT_URL_S3", moto());
    let case = LargeRecordCase::start().await?;
    case.given_up_without_the_setting().await?;
    case.delivered_as_a_pointer_once_the_bucket_exists().await?;
    case.handed_off_as_its_pointer().await?;
    std::env::remove_var("AWS_ENDPOINT_URL_S3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_record_10_mb_value_round_trips_through_the_offload_on_s3() -> TestResult {
    let s3 = moto_s3().await;
    let bucket = unique_name("bucket");
    s3.create_bucket().bucket(&bucket).send().await?;
    let settings = kafka_lambda_relay::config::LargeRecordOffload { bucket: bucket.clone(), key_prefix: Some("big/".into()) };
    let offload = LargeRecordOffload::new(&settings, Arc::new(kafka_lambda_relay::destination::AwsS3(s3.clone())));
    let value = large_value(10 * 1024 * 1024);
    let record = kafka_lambda_relay::kafka::Record::new(
        kafka_lambda_relay::kafka::PartitionKey::new("orders", 0),
        42,
        1_700_000_000_000,
        kafka_lambda_relay::kafka::TimestampType::CreateTime,
        None,
        Some(value.clone()),
        vec![],
    );
    let source = kafka_lambda_relay::event::EventSource {
        event_source: "SelfManagedKafka".into(),
        event_source_arn: None,
        bootstrap_servers: tansu(),
    };
    assert!(source.sizer().with(&record) > kafka_lambda_relay::config::MAX_PAYLOAD_BYTES, "the record is oversized");
    let (_, event) = offload.store(&source, "m-1", &record).await?;
    let event: serde_json::Value = serde_json::from_slice(&event)?;
    let pointer = decode_pointer(&event["records"]["orders-0"][0])?;
    assert_eq!(pointer.size, value.len());
    assert!(s3_bytes(&s3, &pointer.bucket, &pointer.key).await? == value, "10 MB round-trip byte for byte");
    Ok(())
}
