#![cfg(feature = "e2e")]
//! `redrive` end to end on tansu and moto_server: a poison batch the relay gave up to SQS, SNS→SQS or S3
//! (and records on a Kafka failure topic in AWS's documented format) is sent again to its function once the
//! function works. A redrive while it still fails removes nothing; a successful one delivers every record
//! once, byte for byte as the original event, and empties the queue or checkpoints the object / topic, so a
//! second redrive sends nothing. Offsets Kafka does not have are reported, not skipped silently.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::destination::OnFailureDestination;
use kafka_lambda_relay::event::EventSource;
use kafka_lambda_relay::invoke::lambda::LambdaInvoker;
use kafka_lambda_relay::invoke::server::{always, echo_success, local_sdk_config, LocalLambda, Reply};
use kafka_lambda_relay::kafka::Record;
use kafka_lambda_relay::redrive::{self, Options, Source, Summary};
use kafka_lambda_relay::relay::{FailureSink, Services};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

async fn moto_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto())
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "moto"))
        .load()
        .await
}

/// Key, value, headers and timestamp of a record produced.
type Poison = (Option<Vec<u8>>, Vec<u8>, Vec<(&'static str, Vec<u8>)>, i64);

/// What a record of an event carries: group, offset, key, value, headers, timestamp.
type Carried = (String, i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>, i64);

/// The records of the poison batch: binary values, a null key, headers (one empty), fixed timestamps.
fn poison() -> Vec<Poison> {
    vec![
        (
            Some(b"k-0".to_vec()),
            vec![0, 1, 2, 200, 255],
            vec![("trace", b"abc".to_vec()), ("empty", vec![])],
            1_700_000_000_001,
        ),
        (None, b"{\"poison\":true}".to_vec(), vec![("bytes", vec![0, 127, 128, 255])], 1_700_000_000_002),
        (Some(b"k-2".to_vec()), b"third".to_vec(), vec![], 1_700_000_000_003),
    ]
}

async fn produce(
    bootstrap: &str,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, Vec<u8>)],
    timestamp: i64,
) -> TestResult<(i32, i64)> {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("enable.idempotence", "false").create()?;
    let mut owned = OwnedHeaders::new();
    for (name, bytes) in headers {
        owned = owned.insert(Header { key: name, value: Some(bytes.as_slice()) });
    }
    let mut record =
        FutureRecord::<[u8], [u8]>::to(topic).partition(0).payload(value).headers(owned).timestamp(timestamp);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivered =
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| format!("produce to {topic}: {e}"))?;
    Ok((delivered.partition, delivered.offset))
}

/// A topic with the poison batch in partition 0.
async fn seed(topic: &str) -> TestResult {
    let (bootstrap, name) = (tansu(), topic.to_string());
    tokio::task::spawn_blocking(move || create_topic(&bootstrap, &name, 1)).await??;
    for (key, value, headers, timestamp) in poison() {
        produce(&tansu(), topic, key.as_deref(), &value, &headers, timestamp).await?;
    }
    Ok(())
}

/// A target on an in-process Lambda Invoke API that fails until switched, the relay's run that gives the
/// poison batch up to `destination`, and the event the target got then.
struct Given {
    lambda: LocalLambda,
    function: String,
    topic: String,
    invoker: Arc<LambdaInvoker>,
    mapping: kafka_lambda_relay::config::Mapping,
    original_event: Vec<u8>,
}

async fn give_up_to(destination: &str) -> TestResult<Given> {
    let (topic, group, function) = (unique_name("rd"), unique_name("g"), unique_name("fn"));
    seed(&topic).await?;
    let lambda = LocalLambda::start().await?;
    lambda.register(&function, Duration::from_secs(5), always(Reply::unhandled("Poison", "cannot handle this")));
    let invoker = Arc::new(LambdaInvoker::new(&local_sdk_config(&lambda.endpoint()).await));
    let moto = moto_config().await;
    let services = Services {
        invoker: invoker.clone(),
        sinks: Arc::new(move |arn: &str| {
            OnFailureDestination::new(arn, &moto).map(|d| Arc::new(d) as Arc<dyn FailureSink>)
        }),
        secrets: Arc::new(NoSecrets),
    };
    let cfg = config(
        &tansu(),
        &topic,
        &function,
        &group,
        json!({"MaximumRetryAttempts": 0, "BatchSize": 10,
        "MaximumBatchingWindowInSeconds": 1, "DestinationConfig": {"OnFailure": {"Destination": destination}}}),
    );
    let report = run_all(&cfg, &services, &until_idle()).await;
    assert_eq!(report.mappings[0].counts.sent_to_destination, 3, "the poison batch was given up: {report:?}");
    let original_event = lambda.invocations(&function).first().ok_or("the target was invoked")?.payload.clone();
    Ok(Given { lambda, function, topic, invoker, mapping: cfg.mappings[0].clone(), original_event })
}

impl Given {
    async fn redrive(&self, source: &Source) -> TestResult<Summary> {
        let services = redrive::Services {
            invoker: self.invoker.clone(),
            sdk_config: moto_config().await,
            secrets: Arc::new(NoSecrets),
        };
        let options = Options { target_timeout: Some(Duration::from_secs(5)), ..Options::new(source.clone()) };
        Ok(redrive::redrive(&self.mapping, &options, &services).await?)
    }

    fn invocations(&self) -> Vec<Vec<u8>> {
        self.lambda.invocations(&self.function).into_iter().map(|i| i.payload).collect()
    }

    /// While the target still fails: one failed batch, nothing removed. Then it works: every record once,
    /// as the original event. Then nothing more to send. Returns the third summary for source-specific checks.
    async fn fail_then_redrive(&self, source: &Source) -> TestResult<Summary> {
        let failed = self.redrive(source).await?;
        assert_eq!(
            (failed.batches_found, failed.batches_failed, failed.removed, failed.kept),
            (1, 1, 0, 1),
            "{failed:#?}"
        );
        assert_eq!(failed.records_failed, 3);
        assert_eq!(self.invocations().len(), 2, "the original invocation and the failed redrive");

        self.lambda.register(&self.function, Duration::from_secs(5), echo_success());
        let redriven = self.redrive(source).await?;
        assert_eq!(
            (redriven.batches_found, redriven.batches_redriven, redriven.records_redriven),
            (1, 1, 3),
            "{redriven:#?}"
        );
        assert_eq!((redriven.removed, redriven.kept, redriven.records_missing), (1, 0, 0), "{redriven:#?}");
        let invocations = self.invocations();
        assert_eq!(invocations.len(), 3);
        let sent = invocations.last().expect("three invocations");
        assert_eq!(
            String::from_utf8_lossy(sent),
            String::from_utf8_lossy(&self.original_event),
            "the original event, byte for byte"
        );
        assert_records_are_the_poison_batch(sent, &self.topic)?;

        let again = self.redrive(source).await?;
        assert_eq!((again.batches_redriven, again.batches_failed), (0, 0), "{again:#?}");
        assert_eq!(self.invocations().len(), 3, "a second redrive sends nothing");
        Ok(again)
    }
}

/// The event's records are the produced ones: offsets, keys, values, headers and timestamps.
fn assert_records_are_the_poison_batch(event: &[u8], topic: &str) -> TestResult {
    let (_, records) = redrive::parse::records_from_event(&serde_json::from_slice(event)?)?;
    let got: Vec<Carried> = records
        .iter()
        .map(|r| {
            (r.key_partition.to_string(), r.offset, r.key.clone(), r.value.clone(), r.headers.clone(), r.timestamp_ms)
        })
        .collect();
    let want: Vec<Carried> = poison()
        .into_iter()
        .enumerate()
        .map(|(i, (key, value, headers, ts))| {
            (
                format!("{topic}-0"),
                i as i64,
                key,
                Some(value),
                headers.into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
                ts,
            )
        })
        .collect();
    assert_eq!(got, want);
    Ok(())
}

async fn create_queue(sdk: &aws_config::SdkConfig, name: &str) -> TestResult<String> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    Ok(sqs.create_queue().queue_name(name).send().await?.queue_url().ok_or("no queue url")?.to_string())
}

async fn visible_messages(sdk: &aws_config::SdkConfig, url: &str) -> TestResult<usize> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await?;
    let count = attributes
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .ok_or("no ApproximateNumberOfMessages")?;
    Ok(count.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_sqs_batch_is_read_back_from_kafka_redriven_and_deleted_only_after_success() -> TestResult {
    let sdk = moto_config().await;
    let queue = unique_name("dlq");
    let url = create_queue(&sdk, &queue).await?;
    let given = give_up_to(&format!("arn:aws:sqs:us-east-1:123456789012:{queue}")).await?;
    assert_eq!(visible_messages(&sdk, &url).await?, 1);
    let source = Source::Sqs { url: url.clone() };
    let failed = given.redrive(&source).await?;
    assert_eq!((failed.batches_failed, failed.removed), (1, 0), "{failed:#?}");
    assert_eq!(visible_messages(&sdk, &url).await?, 1, "a failing redrive leaves the message, visible");
    given.lambda.register(&given.function, Duration::from_secs(5), echo_success());
    let redriven = given.redrive(&source).await?;
    assert_eq!((redriven.records_redriven, redriven.removed), (3, 1), "{redriven:#?}");
    assert_eq!(visible_messages(&sdk, &url).await?, 0, "the queue is empty");
    let sent = given.invocations();
    assert_eq!(
        sent.last().map(|s| s.as_slice()),
        Some(given.original_event.as_slice()),
        "the original event, byte for byte"
    );
    assert_records_are_the_poison_batch(sent.last().expect("invoked"), &given.topic)?;
    let again = given.redrive(&source).await?;
    assert_eq!(again.batches_found, 0);
    assert_eq!(given.invocations().len(), 3, "nothing sent again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_sns_to_sqs_batch_is_redriven_from_the_subscribed_queue() -> TestResult {
    let sdk = moto_config().await;
    let (topic_name, queue) = (unique_name("failures"), unique_name("sub"));
    let url = create_queue(&sdk, &queue).await?;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic_arn = sns.create_topic().name(&topic_name).send().await?.topic_arn().ok_or("no topic arn")?.to_string();
    let queue_arn = format!("arn:aws:sqs:us-east-1:123456789012:{queue}");
    sns.subscribe().topic_arn(&topic_arn).protocol("sqs").endpoint(&queue_arn).send().await?;
    let given = give_up_to(&topic_arn).await?;
    let again = given.fail_then_redrive(&Source::Sqs { url: url.clone() }).await?;
    assert_eq!(again.batches_found, 0, "the queue is empty");
    assert_eq!(visible_messages(&sdk, &url).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_s3_batch_is_redriven_from_its_payload_and_checkpointed() -> TestResult {
    let sdk = moto_config().await;
    let bucket = unique_name("failed");
    let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
    s3.create_bucket().bucket(&bucket).send().await?;
    let given = give_up_to(&format!("arn:aws:s3:::{bucket}")).await?;
    let again =
        given.fail_then_redrive(&Source::S3 { bucket: bucket.clone(), prefix: "kafka-lambda-relay/".into() }).await?;
    assert_eq!((again.batches_found, again.batches_already_redriven), (0, 1), "{again:#?}");
    let objects = s3.list_objects_v2().bucket(&bucket).send().await?;
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys.len(), 2, "the record and its checkpoint: {keys:?}");
    let record = keys.iter().find(|k| k.starts_with("kafka-lambda-relay/")).ok_or("the record is kept")?;
    assert!(keys.contains(&format!("{}{record}.done", redrive::DEFAULT_CHECKPOINT_PREFIX).as_str()), "{keys:?}");
    Ok(())
}

/// AWS's "Record format for a Kafka destination": one message per failed record, keyed by the record's key.
fn aws_kafka_destination_message(
    source: &EventSource,
    record: &Record,
    function_arn: &str,
) -> TestResult<serde_json::Value> {
    let payload: serde_json::Value = serde_json::from_slice(&source.encode(std::slice::from_ref(record)))?;
    Ok(json!({
        "requestContext": {"requestId": uuid::Uuid::new_v4().to_string(), "functionArn": function_arn,
            "condition": "RetriesExhausted", "approximateInvokeCount": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0", "timestamp": "2026-11-30T12:00:00.000Z",
        "KafkaBatchInfo": {"batchSize": 1, "bootstrapServers": source.bootstrap_servers, "payloadSize": payload.to_string().len(),
            "recordInfo": {"offset": record.offset.to_string(), "timestamp": "2023-11-14T22:13:20.001Z"}},
        "payload": payload
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_kafka_failure_topic_records_in_awss_format_are_redriven_and_committed() -> TestResult {
    let (topic, failures, function, group) =
        (unique_name("src"), unique_name("dlt"), unique_name("fn"), unique_name("rg"));
    let (bootstrap, name) = (tansu(), failures.clone());
    tokio::task::spawn_blocking(move || create_topic(&bootstrap, &name, 1)).await??;
    let source =
        EventSource { event_source: "SelfManagedKafka".into(), event_source_arn: None, bootstrap_servers: tansu() };
    let records: Vec<Record> = poison()
        .into_iter()
        .enumerate()
        .map(|(i, (key, value, headers, ts))| {
            Record::new(
                kafka_lambda_relay::kafka::PartitionKey::new(topic.as_str(), 0),
                i as i64 + 10,
                ts,
                kafka_lambda_relay::kafka::TimestampType::CreateTime,
                key,
                Some(value),
                headers.into_iter().map(|(n, b)| (n.to_string(), b)).collect(),
            )
        })
        .collect();
    for record in &records {
        let message =
            aws_kafka_destination_message(&source, record, "arn:aws:lambda:us-east-1:123456789012:function:f")?;
        produce(&tansu(), &failures, record.key.as_deref(), message.to_string().as_bytes(), &[], record.timestamp_ms)
            .await?;
    }
    let lambda = LocalLambda::start().await?;
    lambda.register(&function, Duration::from_secs(5), always(Reply::unhandled("Poison", "still broken")));
    let invoker = Arc::new(LambdaInvoker::new(&local_sdk_config(&lambda.endpoint()).await));
    let services = redrive::Services { invoker, sdk_config: moto_config().await, secrets: Arc::new(NoSecrets) };
    let mapping = config(&tansu(), &topic, &function, &unique_name("g"), json!({})).mappings[0].clone();
    let options = Options {
        target_timeout: Some(Duration::from_secs(5)),
        group: Some(group.clone()),
        ..Options::new(Source::Kafka { topic: failures.clone() })
    };

    let failed = redrive::redrive(&mapping, &options, &services).await?;
    assert_eq!((failed.batches_found, failed.batches_failed, failed.removed), (3, 3, 0), "{failed:#?}");
    assert_eq!(committed_offsets(&tansu(), &group, &failures, 1)?, vec![None], "a failing redrive commits nothing");

    lambda.register(&function, Duration::from_secs(5), echo_success());
    let redriven = redrive::redrive(&mapping, &options, &services).await?;
    assert_eq!((redriven.batches_redriven, redriven.records_redriven, redriven.removed), (3, 3, 3), "{redriven:#?}");
    assert_eq!(committed_offsets(&tansu(), &group, &failures, 1)?, vec![Some(3)], "checkpointed");
    let sent: Vec<Vec<u8>> = lambda.invocations(&function).into_iter().skip(3).map(|i| i.payload).collect();
    let want: Vec<Vec<u8>> = records.iter().map(|r| source.encode(std::slice::from_ref(r))).collect();
    assert_eq!(sent, want, "each record once, as its original event");

    let again = redrive::redrive(&mapping, &options, &services).await?;
    assert_eq!(again.batches_found, 0, "{again:#?}");
    assert_eq!(lambda.invocation_count(&function), 6, "a second redrive sends nothing");
    Ok(())
}

/// An SQS record naming offsets past the log end (tansu deletes nothing by retention; the fast tier's
/// `redrive_mock` covers offsets below the log start on the mock cluster, whose partitions drop old records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_offsets_kafka_does_not_have_are_reported_and_the_rest_redriven() -> TestResult {
    let sdk = moto_config().await;
    let (topic, function) = (unique_name("rd"), unique_name("fn"));
    seed(&topic).await?;
    let url = create_queue(&sdk, &unique_name("dlq")).await?;
    let record = json!({
        "requestContext": {"requestId": "r-1", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
            "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0", "timestamp": "2026-11-30T12:00:00.000Z",
        "KafkaBatchInfo": {"batchSize": 6, "eventSourceArn": null, "bootstrapServers": tansu(), "payloadSize": 1,
            "recordsInfo": {format!("{topic}-0"): {"firstRecordOffset": "0", "lastRecordOffset": "5",
                "firstRecordTimestamp": "2023-11-14T22:13:20.001Z", "lastRecordTimestamp": "2023-11-14T22:13:20.003Z"}}}
    });
    aws_sdk_sqs::Client::new(&sdk).send_message().queue_url(&url).message_body(record.to_string()).send().await?;
    let lambda = LocalLambda::start().await?;
    lambda.register(&function, Duration::from_secs(5), echo_success());
    // Through the command line, as a user runs it.
    let dir = TempDir::new("redrive-config")?;
    let file = dir.path().join("config.json");
    let mapping = config(&tansu(), &topic, &function, &unique_name("g"), json!({})).mappings[0].clone();
    std::fs::write(&file, serde_json::to_vec(&json!({"Mappings": [mapping]}))?)?;
    let mut command = std::process::Command::new(relay_bin());
    command
        .arg("redrive")
        .arg(&url)
        .arg("--config")
        .arg(&file)
        .args(["--target-timeout", "5"])
        .envs([("AWS_ENDPOINT_URL", moto()), ("AWS_ENDPOINT_URL_LAMBDA", lambda.endpoint())])
        .envs([("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")]);
    let finished =
        tokio::task::spawn_blocking(move || run_captured("kafka-lambda-relay redrive", command, PROCESS_TIMEOUT))
            .await??;
    // The README's example output; shown with --nocapture.
    println!("{}", finished.stdout);
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr_tail());
    let summary = finished.json()?;
    assert_eq!(
        (&summary["RecordsFound"], &summary["RecordsRedriven"], &summary["RecordsMissing"]),
        (&json!(3), &json!(3), &json!(3)),
        "{summary:#}"
    );
    assert_eq!(
        summary["Missing"],
        json!([{"Topic": topic, "Partition": 0, "FirstOffset": 3, "LastOffset": 5, "Reason": "BeyondLogEnd"}])
    );
    assert_eq!(
        (&summary["Removed"], &summary["Kept"]),
        (&json!(1), &json!(0)),
        "the rest was redriven, the gap reported"
    );
    assert_eq!(visible_messages(&sdk, &url).await?, 0);
    assert_records_are_the_poison_batch(&lambda.invocations(&function)[0].payload, &topic)?;
    Ok(())
}

/// The whole loop on a Kafka failure topic: the relay's own `kafka://` destination writes the poison batch
/// (one message per record, AWS's format), and `redrive` brings each record back to the target once it
/// works, as the event of that one record; nothing is committed while the target still fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_records_the_relays_kafka_destination_wrote_are_redriven_once_the_target_works() -> TestResult {
    let (failures, group) = (unique_name("dlt"), unique_name("rg"));
    let (bootstrap, name) = (tansu(), failures.clone());
    tokio::task::spawn_blocking(move || create_topic(&bootstrap, &name, 1)).await??;
    let given = give_up_to(&format!("kafka://{failures}")).await?;
    let options = Options {
        target_timeout: Some(Duration::from_secs(5)),
        group: Some(group.clone()),
        ..Options::new(Source::Kafka { topic: failures.clone() })
    };
    let services = redrive::Services {
        invoker: given.invoker.clone(),
        sdk_config: moto_config().await,
        secrets: Arc::new(NoSecrets),
    };

    let failed = redrive::redrive(&given.mapping, &options, &services).await?;
    assert_eq!((failed.batches_found, failed.batches_failed, failed.removed), (3, 3, 0), "{failed:#?}");
    assert_eq!(committed_offsets(&tansu(), &group, &failures, 1)?, vec![None], "a failing redrive commits nothing");

    given.lambda.register(&given.function, Duration::from_secs(5), echo_success());
    let redriven = redrive::redrive(&given.mapping, &options, &services).await?;
    assert_eq!((redriven.batches_redriven, redriven.records_redriven, redriven.removed), (3, 3, 3), "{redriven:#?}");
    assert_eq!(committed_offsets(&tansu(), &group, &failures, 1)?, vec![Some(3)], "checkpointed");
    // The original invocation, three failed redrives, three redriven records: each one the original
    // record (offset, key, value, headers, timestamp) in an event of its own.
    let sent = given.invocations();
    assert_eq!(sent.len(), 7);
    let (_, original) = redrive::parse::records_from_event(&serde_json::from_slice(&given.original_event)?)?;
    for (event, want) in sent[4..].iter().zip(&original) {
        let (_, got) = redrive::parse::records_from_event(&serde_json::from_slice(event)?)?;
        assert_eq!(got.len(), 1);
        let (got, want) = (&got[0], want);
        assert_eq!(
            (&got.key_partition, got.offset, &got.key, &got.value, &got.headers, got.timestamp_ms),
            (&want.key_partition, want.offset, &want.key, &want.value, &want.headers, want.timestamp_ms)
        );
    }
    let again = redrive::redrive(&given.mapping, &options, &services).await?;
    assert_eq!(again.batches_found, 0, "{again:#?}");
    Ok(())
}
