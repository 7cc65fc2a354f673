#![cfg(feature = "e2e")]
//! Schema registries end to end: records produced to tansu by real schema-aware producers
//! (confluent-kafka's serializers against the registry test double; AWS's Glue serializer against
//! moto_server's Glue), the relay binary decoding them before filtering, the recording target receiving the
//! decoded records, and undecodable ones reaching the on-failure destination (SQS on moto) uninvoked.

mod common;
mod schema;

use std::process::Command;

use common::*;
use schema::{produce, RegistryDouble};
use serde_json::{json, Value};

const RECORDING: &str = "recording-target";

/// `kafka-lambda-relay run --until-idle` with `config`, the AWS services it reaches (SQS, Glue) on moto.
fn run_relay_with_moto(config: &Value) -> TestResult<Value> {
    let dir = TempDir::new("relay-config")?;
    let file = dir.path().join("config.json");
    std::fs::write(&file, serde_json::to_vec_pretty(config)?)?;
    let mut command = Command::new(relay_bin());
    command
        .args(["run", "--config"])
        .arg(&file)
        .args(["--until-idle", "--target-timeout", "30", "--max-seconds", "120"])
        .envs(relay_env())
        .env("AWS_ENDPOINT_URL_SQS", moto())
        .env("AWS_ENDPOINT_URL_GLUE", moto());
    let finished = run_captured("kafka-lambda-relay run", command, PROCESS_TIMEOUT)?;
    eprintln!("relay exited with {}; stderr tail:\n{}", finished.status, finished.stderr_tail());
    if finished.code() != Some(0) {
        return Err(format!("relay exited with {:?}: {}", finished.status, finished.stdout).into());
    }
    finished.json()
}

/// (offset, value) of the records the recording target accepted from `topic`, in the order received.
fn received(topic: &str) -> TestResult<Vec<(i64, Value)>> {
    let mut out = Vec::new();
    for d in delivered(RECORDING, topic)?.into_iter().filter(|d| d.accepted) {
        out.push((d.offset, serde_json::from_str(d.value.as_deref().ok_or("null value")?)?));
    }
    Ok(out)
}

/// Runs `future` to completion (the common helpers are blocking, so the tests are too).
fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(future)
}

/// Bodies of the messages waiting in the SQS queue at `queue_url` on moto.
async fn queue_messages(queue_url: &str) -> TestResult<Vec<Value>> {
    let sqs = aws_sdk_sqs::Client::new(&schema::moto_config().await);
    let mut out = Vec::new();
    loop {
        let batch = sqs.receive_message().queue_url(queue_url).max_number_of_messages(10).send().await?;
        let messages = batch.messages();
        if messages.is_empty() {
            return Ok(out);
        }
        for message in messages {
            out.push(serde_json::from_str(message.body().ok_or("no body")?)?);
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await?;
        }
    }
}

/// A record's value as AWS encodes it when the mapping asks for `JSON` and the registry decoded it.
fn order(id: i64, status: &str) -> Value {
    json!({"id": id, "status": status, "amount": 2.5})
}

#[test]
fn confluent_records_are_decoded_filtered_and_undecodable_ones_go_to_the_destination() -> TestResult {
    let double = RegistryDouble::start()?;
    let topic = unique_name("schema-confluent");
    create_topic(&tansu(), &topic, 1)?;
    let garbage = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"no schema framing");
    let (records, _) = produce(json!({
        "registry": "confluent", "url": double.url, "topic": topic, "bootstrap": tansu(),
        "records": [
            {"format": "avro", "value": order(1, "PAID"), "key": "o-1", "key_avro": true},
            {"format": "protobuf", "value": order(2, "PAID"), "key": "o-2", "key_avro": true},
            {"format": "json", "value": order(3, "PAID"), "key": "o-3", "key_avro": true},
            {"format": "avro", "value": order(4, "NEW"), "key": "o-4", "key_avro": true},
            {"format": "raw", "value": garbage, "key": "o-5", "key_avro": true},
            {"format": "json", "value": order(6, "SHIPPED"), "key": "o-6", "key_avro": true}
        ]
    }))
    .map_err(|e| e.to_string())?;
    assert_eq!(records.len(), 6);
    let queue = unique_name("schema-dlq");
    let queue_url = block(async {
        let sqs = aws_sdk_sqs::Client::new(&schema::moto_config().await);
        let created = sqs.create_queue().queue_name(&queue).send().await?;
        TestResult::Ok(created.queue_url().ok_or("no queue URL")?.to_string())
    })?;

    let mut mapping = tansu_mapping(RECORDING, &topic, &unique_name("group"));
    let group = mapping["SelfManagedKafkaEventSourceConfig"]["ConsumerGroupId"].clone();
    mapping["SelfManagedKafkaEventSourceConfig"] = json!({
        "ConsumerGroupId": group,
        "SchemaRegistryConfig": {
            "SchemaRegistryURI": double.url,
            "EventRecordFormat": "JSON",
            "SchemaValidationConfigs": [{"Attribute": "KEY"}, {"Attribute": "VALUE"}]
        }
    });
    mapping["FilterCriteria"] = json!({"Filters": [{"Pattern": r#"{"value": {"status": ["PAID", "SHIPPED"]}}"#}]});
    mapping["DestinationConfig"] =
        json!({"OnFailure": {"Destination": format!("arn:aws:sqs:us-east-1:123456789012:{queue}")}});
    let report = run_relay_with_moto(&json!({"Mappings": [mapping]}))?;

    // Protobuf's JSON mapping writes int64 as a string; the NEW order is filtered out on its decoded status.
    let mut protobuf = order(2, "PAID");
    protobuf["id"] = json!("2");
    assert_eq!(
        received(&topic)?,
        vec![(0, order(1, "PAID")), (1, protobuf), (2, order(3, "PAID")), (5, order(6, "SHIPPED"))]
    );
    let messages = block(queue_messages(&queue_url))?;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["requestContext"]["condition"], "DESERIALIZATION_ERROR");
    assert_eq!(messages[0]["requestContext"]["approximateInvokeCount"], 0);
    assert_eq!(messages[0]["responseContext"], Value::Null);
    assert_eq!(messages[0]["KafkaBatchInfo"]["recordsInfo"][format!("{topic}-0")]["firstRecordOffset"], "4");
    let counts = &report["Mappings"][0]["Counts"];
    assert_eq!(
        (counts["Polled"].as_u64(), counts["FilteredOut"].as_u64(), counts["Committed"].as_u64()),
        (Some(6), Some(1), Some(6))
    );
    assert_eq!(committed_offsets(&tansu(), group.as_str().unwrap_or_default(), &topic, 1)?, vec![Some(6)]);
    Ok(())
}

#[test]
fn a_registry_outage_holds_the_partition_and_a_later_run_delivers_everything() -> TestResult {
    let double = RegistryDouble::start()?;
    let topic = unique_name("schema-outage");
    create_topic(&tansu(), &topic, 1)?;
    produce(json!({
        "registry": "confluent", "url": double.url, "topic": topic, "bootstrap": tansu(),
        "records": [{"format": "avro", "value": order(1, "NEW")}, {"format": "avro", "value": order(2, "NEW")}]
    }))
    .map_err(|e| e.to_string())?;
    let group = unique_name("group");
    let mut mapping = tansu_mapping(RECORDING, &topic, &group);
    mapping["SelfManagedKafkaEventSourceConfig"]["SchemaRegistryConfig"] = json!({
        "SchemaRegistryURI": double.url, "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "VALUE"}]
    });
    let config = json!({"Mappings": [mapping]});

    double.set_down(true).map_err(|e| e.to_string())?;
    let report = run_relay_with_moto(&config)?;
    assert!(received(&topic)?.is_empty());
    assert_eq!(committed_offsets(&tansu(), &group, &topic, 1)?, vec![None], "nothing committed past the held record");
    let result = report["Mappings"][0]["LastProcessingResult"].as_str().unwrap_or_default().to_string();
    assert!(result.contains("held at offset 0"), "{result}");

    double.set_down(false).map_err(|e| e.to_string())?;
    run_relay_with_moto(&config)?;
    assert_eq!(received(&topic)?, vec![(0, order(1, "NEW")), (1, order(2, "NEW"))]);
    assert_eq!(committed_offsets(&tansu(), &group, &topic, 1)?, vec![Some(2)]);
    Ok(())
}

#[test]
fn glue_records_reach_the_target_as_json_and_as_source_bytes_with_key_validation() -> TestResult {
    let registry_name = unique_name("registry");
    // A topic of Avro and Protobuf records, delivered as JSON.
    let binary_topic = unique_name("schema-glue-bin");
    create_topic(&tansu(), &binary_topic, 1)?;
    produce(json!({
        "registry": "glue", "moto": moto(), "registry_name": registry_name, "topic": binary_topic, "bootstrap": tansu(),
        "records": [{"format": "avro", "value": order(7, "PAID")}, {"format": "protobuf", "value": order(8, "NEW")}]
    }))
    .map_err(|e| e.to_string())?;
    // A topic of JSON Schema records with Avro string keys, delivered as SOURCE.
    let topic = unique_name("schema-glue");
    create_topic(&tansu(), &topic, 1)?;
    let (records, arn) = produce(json!({
        "registry": "glue", "moto": moto(), "registry_name": registry_name, "topic": topic, "bootstrap": tansu(),
        "records": [
            {"format": "json", "value": order(1, "PAID"), "key": "g-1", "key_avro": true},
            {"format": "json", "value": order(2, "NEW"), "key": "g-2", "key_avro": true},
            {"format": "json", "value": order(3, "PAID"), "key": "not framed"}
        ]
    }))
    .map_err(|e| e.to_string())?;
    let arn = arn.ok_or("no registry ARN")?;
    let group = unique_name("group");
    let mut mapping = tansu_mapping(RECORDING, &topic, &group);
    mapping["SelfManagedKafkaEventSourceConfig"]["SchemaRegistryConfig"] = json!({
        "SchemaRegistryURI": arn, "EventRecordFormat": "SOURCE",
        "SchemaValidationConfigs": [{"Attribute": "KEY"}, {"Attribute": "VALUE"}]
    });
    mapping["FilterCriteria"] = json!({"Filters": [{"Pattern": r#"{"value": {"status": ["PAID"]}}"#}]});
    let binary_group = unique_name("group");
    let mut binary_mapping = tansu_mapping(RECORDING, &binary_topic, &binary_group);
    binary_mapping["SelfManagedKafkaEventSourceConfig"]["SchemaRegistryConfig"] = json!({
        "SchemaRegistryURI": arn, "EventRecordFormat": "JSON", "SchemaValidationConfigs": [{"Attribute": "VALUE"}]
    });
    let report = run_relay_with_moto(&json!({"Mappings": [mapping, binary_mapping]}))?;

    let mut protobuf = order(8, "NEW");
    protobuf["id"] = json!("8");
    assert_eq!(received(&binary_topic)?, vec![(0, order(7, "PAID")), (1, protobuf)]);
    assert_eq!(committed_offsets(&tansu(), &binary_group, &binary_topic, 1)?, vec![Some(2)]);

    // SOURCE: the JSON bytes the producer wrote, without Glue's 18-byte header; the filter matched the
    // decoded status (NEW filtered out). The third record's key has no Glue framing: it is undecodable and,
    // without a destination, dropped (as AWS discards it).
    let value = records[0].1.clone().ok_or("value")?;
    let source: Value = serde_json::from_slice(&value[18..])?;
    assert_eq!(received(&topic)?, vec![(0, source)]);
    let counts = &report["Mappings"][0]["Counts"];
    assert_eq!(
        (counts["Delivered"].as_u64(), counts["FilteredOut"].as_u64(), counts["Dropped"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{counts}"
    );
    assert_eq!(committed_offsets(&tansu(), &group, &topic, 1)?, vec![Some(3)]);
    Ok(())
}
