//! The decoding stage in the engine, on an in-process Kafka, Lambda and Confluent-style registry (an axum
//! route serving `GET /schemas/ids/{id}`): decoded records reach the target as JSON with
//! `valueSchemaMetadata`, filters match decoded fields, undecodable records go to the on-failure
//! destination uninvoked while the rest are delivered, and a registry outage holds the partition (nothing
//! committed past the record) until a later run decodes it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::echo_success;
use common::*;

const AVRO_ORDER: &str = r#"{"type":"record","name":"Order","namespace":"demo","fields":[
    {"name":"id","type":"long"},{"name":"status","type":"string"}]}"#;

/// An in-process registry: schema 1 is [`AVRO_ORDER`]; every other id is unknown (404, as Confluent's
/// 40403). While `down` is set it answers 503.
async fn registry(down: Arc<AtomicBool>) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    let app = axum::Router::new()
        .route(
            "/schemas/ids/{id}",
            axum::routing::get(|State(down): State<Arc<AtomicBool>>, Path(id): Path<u32>| async move {
                if down.load(Ordering::SeqCst) {
                    return (StatusCode::SERVICE_UNAVAILABLE, r#"{"error_code":50003,"message":"down"}"#.to_string());
                }
                match id {
                    1 => (StatusCode::OK, serde_json::json!({ "schema": AVRO_ORDER }).to_string()),
                    _ => {
                        (StatusCode::NOT_FOUND, format!(r#"{{"error_code":40403,"message":"Schema {id} not found"}}"#))
                    }
                }
            }),
        )
        .with_state(down);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(listener, app)));
    Ok(url)
}

/// Confluent framing of an Avro `demo.Order`.
fn avro_order(schema_id: u32, id: i64, status: &str) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(AVRO_ORDER).expect("schema");
    let mut record = apache_avro::types::Record::new(&schema).expect("record schema");
    record.put("id", id);
    record.put("status", status);
    let mut out = vec![0];
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(&schema, record).expect("encodes"));
    out
}

fn registry_mapping(url: &str, group: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut mapping = serde_json::json!({
        "SelfManagedKafkaEventSourceConfig": {
            "ConsumerGroupId": group,
            "SchemaRegistryConfig": {
                "SchemaRegistryURI": url,
                "EventRecordFormat": "JSON",
                "SchemaValidationConfigs": [{"Attribute": "VALUE"}]
            }
        }
    });
    for (key, value) in extra.as_object().expect("object") {
        mapping[key] = value.clone();
    }
    mapping
}

/// (offset, decoded value, valueSchemaMetadata) of every record the target received.
fn received(h: &Harness, function: &str) -> Vec<(i64, serde_json::Value, serde_json::Value)> {
    let mut out = Vec::new();
    for invocation in h.lambda.invocations(function) {
        let event: serde_json::Value = serde_json::from_slice(&invocation.payload).expect("event JSON");
        for records in event["records"].as_object().expect("records").values() {
            for record in records.as_array().expect("array") {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(record["value"].as_str().expect("value"))
                    .expect("base64");
                out.push((
                    record["offset"].as_i64().expect("offset"),
                    serde_json::from_slice(&value).expect("decoded JSON"),
                    record["valueSchemaMetadata"].clone(),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_go_to_the_destination_uninvoked_and_filters_match_decoded_fields() -> TestResult {
    let h = Harness::start().await?;
    let url = registry(Arc::new(AtomicBool::new(false))).await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.kafka.create_topic(&topic, 1)?;
    let values = [
        avro_order(1, 1, "PAID"),
        avro_order(1, 2, "NEW"),
        avro_order(99, 3, "PAID"), // no schema 99: SCHEMA_NOT_FOUND
        avro_order(1, 4, "PAID"),
        b"not framed".to_vec(), // DESERIALIZATION_ERROR
        avro_order(1, 6, "PAID"),
    ];
    for value in &values {
        h.kafka.produce(&topic, 0, None, Some(value))?;
    }
    h.kafka.flush()?;
    h.register(&function, echo_success());
    let extra = registry_mapping(
        &url,
        &group,
        serde_json::json!({
            "FilterCriteria": {"Filters": [{"Pattern": r#"{"value": {"status": ["PAID"]}}"#}]},
            "DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:123456789012:dlq"}}
        }),
    );
    let report =
        run_all(&config(h.kafka.bootstrap_servers(), &topic, &function, &group, extra), &h.services, &until_idle())
            .await;

    let metadata = serde_json::json!({"dataFormat": "AVRO", "schemaId": "1"});
    let order = |id: i64| serde_json::json!({"id": id, "status": "PAID"});
    assert_eq!(
        received(&h, &function),
        vec![(0, order(1), metadata.clone()), (3, order(4), metadata.clone()), (5, order(6), metadata)],
        "decoded records, filtered on the decoded status; the undecodable ones never reach the target"
    );
    let written = h.destination.written.lock().unwrap().clone();
    type GivenUp<'a> = (&'a str, Vec<(i32, i64)>, u32);
    let given_up: Vec<GivenUp> =
        written.iter().map(|w| (w.condition, w.records.clone(), w.approximate_invoke_count)).collect();
    assert_eq!(given_up, vec![("SCHEMA_NOT_FOUND", vec![(0, 2)], 0), ("DESERIALIZATION_ERROR", vec![(0, 4)], 0)]);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(6)]);
    let counts = &report.mappings[0].counts;
    assert_eq!((counts.delivered, counts.filtered_out, counts.sent_to_destination, counts.invocations), (3, 1, 2, 3));
    assert_eq!(counts.schema_registry_errors, 2, "SchemaRegistryErrorCount: the unknown schema and the bad bytes");
    assert_eq!(report.mappings[0].last_processing_result, "OK");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_commits_nothing_past_the_record_and_a_later_run_delivers_it() -> TestResult {
    let h = Harness::start().await?;
    let down = Arc::new(AtomicBool::new(true));
    let url = registry(down.clone()).await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.kafka.create_topic(&topic, 1)?;
    for id in 0..3 {
        h.kafka.produce(&topic, 0, None, Some(&avro_order(1, id, "NEW")))?;
    }
    h.kafka.flush()?;
    h.register(&function, echo_success());
    let cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        &function,
        &group,
        registry_mapping(&url, &group, serde_json::json!({})),
    );

    let report = run_all(&cfg, &h.services, &until_idle()).await;
    assert!(received(&h, &function).is_empty(), "nothing is delivered while the schema cannot be fetched");
    assert!(h.destination.written.lock().unwrap().is_empty(), "an outage is not the record's fault: nothing given up");
    assert_eq!(h.committed(&group, &topic, 1), vec![None], "nothing committed past the held record");
    assert!(
        report.mappings[0].last_processing_result.contains("held at offset 0"),
        "{}",
        report.mappings[0].last_processing_result
    );
    assert_eq!(
        report.mappings[0].counts.schema_registry_errors,
        1,
        "SchemaRegistryErrorCount: the failed fetch (later records of the held partition are not looked up)"
    );

    down.store(false, Ordering::SeqCst);
    let report = run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(report.mappings[0].counts.schema_registry_errors, 0, "a run whose fetches succeed counts no error");
    let offsets: Vec<i64> = received(&h, &function).into_iter().map(|(offset, _, _)| offset).collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_destination_undecodable_records_are_dropped_as_aws_does() -> TestResult {
    let h = Harness::start().await?;
    let url = registry(Arc::new(AtomicBool::new(false))).await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.kafka.create_topic(&topic, 1)?;
    for value in [avro_order(1, 1, "NEW"), vec![0, 0, 0, 0, 1, 0xff], avro_order(1, 3, "NEW")] {
        h.kafka.produce(&topic, 0, None, Some(&value))?;
    }
    h.kafka.flush()?;
    h.register(&function, echo_success());
    let cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        &function,
        &group,
        registry_mapping(&url, &group, serde_json::json!({})),
    );
    let report = run_all(&cfg, &h.services, &until_idle()).await;
    let offsets: Vec<i64> = received(&h, &function).into_iter().map(|(offset, _, _)| offset).collect();
    assert_eq!(offsets, vec![0, 2]);
    assert_eq!((report.mappings[0].counts.dropped, report.mappings[0].counts.delivered), (1, 2));
    assert!(h.destination.written.lock().unwrap().is_empty());
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);
    Ok(())
}
