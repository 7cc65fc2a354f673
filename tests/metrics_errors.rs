//! The `ErrorCount` metrics, each forced on an in-process Kafka and Lambda: a target that fails (function
//! errors and throttles), an on-failure destination that is down, a failed commit, a broker that goes away,
//! a schema registry that is down and a record that does not decode.
//! Each is counted in the run report and in the EMF lines, and no record is committed past one that was
//! neither delivered nor handed to the destination.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::{always, script, Reply};
use kafka_lambda_relay::metrics::EmfSink;
use kafka_lambda_relay::relay::RunOptions;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use common::*;

const DLQ: &str = "arn:aws:sqs:us-east-1:123456789012:relay-dlq";

/// Options that keep every EMF line of the run, flushed every second.
fn collecting(options: RunOptions) -> (RunOptions, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let options = RunOptions {
        metrics: EmfSink::Collect(lines.clone()),
        metrics_interval: Duration::from_secs(1),
        ..options
    };
    (options, lines)
}

/// The sum of metric `name` over the EMF lines.
fn emitted(lines: &Arc<Mutex<Vec<String>>>, name: &str) -> u64 {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get(name).and_then(serde_json::Value::as_u64))
        .sum()
}

fn all_groups() -> serde_json::Value {
    serde_json::json!({"Metrics": ["EventCount", "ErrorCount", "KafkaMetrics"]})
}


/// Mapping UUIDs of the metrics-selection test (UUIDs must be UUIDs).
const ALL_GROUPS: &str = "6f1c2a7e-0000-4000-8000-000000000001";
const NO_METRICS_CONFIG: &str = "6f1c2a7e-0000-4000-8000-000000000002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_counts_failed_invoke_events_and_invoke_errors() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 5)?;
    // A throttle (the call never reaches the function), a function error, then success.
    h.register(
        &function,
        script(
            vec![Reply::throttled(), Reply::unhandled("Boom", "fails once")],
            Reply::success("{}"),
        ),
    );
    let cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        &function,
        &group,
        serde_json::json!({"MetricsConfig": all_groups()}),
    );
    let (options, lines) = collecting(until_idle());
    let report = run_all(&cfg, &h.services, &options).await;
    let counts = report.mappings[0].counts;

    assert_eq!(counts.invoke_errors, 1, "the throttled call");
    assert_eq!(
        counts.invocations, 2,
        "the function error and the success reached the function"
    );
    assert_eq!(counts.invoked_events, 10, "5 records, invoked twice");
    assert_eq!(
        counts.failed_invoke_events, 10,
        "5 in the throttled call, 5 in the failed invocation"
    );
    assert_eq!(emitted(&lines, "InvokeErrorCount"), 1);
    assert_eq!(emitted(&lines, "FailedInvokeEventCount"), 10);
    assert_eq!(emitted(&lines, "InvokedEventCount"), 10);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(5)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_is_down_counts_delivery_errors_and_commits_nothing_past_it() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 3)?;
    h.register(&function, always(Reply::unhandled("Boom", "always fails")));
    h.destination.failing.store(true, Ordering::SeqCst);
    let extra = serde_json::json!({
        "MaximumRetryAttempts": 0,
        "DestinationConfig": {"OnFailure": {"Destination": DLQ}},
        "MetricsConfig": all_groups(),
    });
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, extra);
    let (options, lines) = collecting(bounded(4));
    let report = run_all(&cfg, &h.services, &options).await;
    let counts = report.mappings[0].counts;

    let refused = h.destination.refused.load(Ordering::SeqCst) as u64;
    assert!(refused >= 2, "the destination was retried while down ({refused})");
    assert_eq!(
        counts.on_failure_destination_delivery_errors, refused,
        "every refused write is counted"
    );
    assert_eq!(emitted(&lines, "OnFailureDestinationDeliveryErrorCount"), refused);
    assert_eq!(counts.sent_to_destination, 0);
    assert_eq!(
        h.committed(&group, &topic, 1),
        vec![Some(0)],
        "nothing committed past the records the destination refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_counted_and_the_next_commit_catches_up() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 2, 50)?;
    h.register(&function, always(Reply::success("{}")));
    // The group refuses the next two commits.
    h.kafka.fail_next_requests(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE,
        ],
    );
    let cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        &function,
        &group,
        serde_json::json!({"MetricsConfig": all_groups()}),
    );
    let (options, lines) = collecting(until_idle());
    let report = run_all(&cfg, &h.services, &options).await;
    let counts = report.mappings[0].counts;

    assert!(counts.commit_errors >= 1, "{counts:?}");
    assert_eq!(emitted(&lines, "CommitErrorCount"), counts.commit_errors);
    assert_eq!(
        h.committed(&group, &topic, 2),
        vec![Some(50), Some(50)],
        "a later commit covers what the failed one held"
    );
    assert_eq!(emitted(&lines, "CommittedEventCount"), counts.committed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_counts_polling_errors() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 10)?;
    h.register(&function, always(Reply::success("{}")));
    let cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        &function,
        &group,
        serde_json::json!({"MetricsConfig": all_groups()}),
    );
    // Not until idle: the run must still be polling when the broker goes.
    let (options, lines) = collecting(RunOptions {
        until_idle: false,
        ..bounded(8)
    });
    let run = tokio::spawn({
        let services = h.services.clone();
        async move { run_all(&cfg, &services, &options).await }
    });
    // Let the run join and deliver, then take the only broker away for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.kafka.set_broker_up(1, false)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.kafka.set_broker_up(1, true)?;
    let report = run.await?;
    let counts = report.mappings[0].counts;

    assert!(counts.polling_errors >= 1, "{counts:?}");
    assert_eq!(emitted(&lines, "PollingErrorCount"), counts.polling_errors);
    assert_eq!(counts.delivered, 10);
    Ok(())
}

/// AWS: `SchemaRegistryErrorCount` is "the number of errors that Lambda failed to fetch the schema or
/// deserialize with the schema". One partition's record names a schema the registry (down: nothing listens
/// on its port) cannot serve, the other partition's record is not framed for a registry at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_and_an_undecodable_record_count_schema_registry_errors() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.kafka.create_topic(&topic, 2)?;
    // Confluent framing: magic byte 0, schema id 1, then a payload.
    h.kafka.produce(&topic, 0, None, Some(&[0u8, 0, 0, 0, 1, 2][..]))?;
    h.kafka.produce(&topic, 1, None, Some(&b"not framed"[..]))?;
    h.kafka.flush()?;
    h.register(&function, always(Reply::success("{}")));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let extra = serde_json::json!({
        "MetricsConfig": all_groups(),
        "SelfManagedKafkaEventSourceConfig": {
            "ConsumerGroupId": group,
            "SchemaRegistryConfig": {
                "SchemaRegistryURI": format!("http://{closed}"),
                "EventRecordFormat": "JSON",
                "SchemaValidationConfigs": [{"Attribute": "VALUE"}]
            }
        }
    });
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, extra);
    let (options, lines) = collecting(until_idle());
    let report = run_all(&cfg, &h.services, &options).await;
    let counts = report.mappings[0].counts;

    assert_eq!(counts.schema_registry_errors, 2, "the failed fetch and the undecodable record: {counts:?}");
    assert_eq!(emitted(&lines, "SchemaRegistryErrorCount"), 2);
    assert_eq!(counts.invocations, 0, "neither record reaches the target");
    assert_eq!(
        h.committed(&group, &topic, 2),
        vec![None, Some(1)],
        "the record whose schema could not be fetched is held, the undecodable one given up (dropped)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_interval_deltas_add_up_to_the_report_and_groups_follow_metrics_config() -> TestResult {
    let h = Harness::start().await?;
    let (topic, function) = (unique_name("t"), unique_name("fn"));
    h.seed(&topic, 2, 40)?;
    // Slow enough that the run spans several 1 s intervals.
    h.register(
        &function,
        always(Reply::success("{}").after(Duration::from_millis(400))),
    );
    let mut cfg = config(
        h.kafka.bootstrap_servers(),
        &topic,
        &function,
        &unique_name("g"),
        serde_json::json!({"UUID": ALL_GROUPS, "BatchSize": 5, "MetricsConfig": all_groups()}),
    );
    let mut plain = cfg.mappings[0].clone();
    plain.uuid = Some(NO_METRICS_CONFIG.into());
    plain.metrics_config = None;
    plain.self_managed_kafka_event_source_config = Some(kafka_lambda_relay::config::KafkaEventSourceConfig {
        consumer_group_id: Some(unique_name("g")),
        schema_registry_config: None,
    });
    cfg.mappings.push(plain);
    let (options, lines) = collecting(until_idle());
    let report = run_all(&cfg, &h.services, &options).await;

    let parsed: Vec<serde_json::Value> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let of = |uuid: &str| {
        parsed
            .iter()
            .filter(|l| l["EventSourceMappingUUID"] == uuid)
            .cloned()
            .collect::<Vec<_>>()
    };
    let all = of(ALL_GROUPS);
    let intervals = all.iter().filter(|l| l.get("PolledEventCount").is_some()).count();
    assert!(
        intervals >= 3,
        "a run of several seconds writes several intervals ({intervals})"
    );
    let counts = report.mappings[0].counts;
    let sum = |name: &str| {
        all.iter()
            .filter_map(|l| l.get(name).and_then(serde_json::Value::as_u64))
            .sum::<u64>()
    };
    assert_eq!(
        [
            sum("PolledEventCount"),
            sum("InvokedEventCount"),
            sum("CommittedEventCount"),
            sum("DroppedEventCount")
        ],
        [counts.polled, counts.invoked_events, counts.committed, counts.dropped]
    );
    assert_eq!([counts.polled, counts.invoked_events, counts.committed], [80, 80, 80]);
    let batches: usize = all
        .iter()
        .filter_map(|l| l["BatchRecordCount"].as_array())
        .map(Vec::len)
        .sum();
    assert_eq!(
        batches as u64, counts.invocations,
        "one BatchRecordCount value per invocation"
    );

    let names: std::collections::BTreeSet<String> = of(NO_METRICS_CONFIG)
        .iter()
        .flat_map(|l| {
            l["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|m| m["Name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["OffsetLag", "TimeLag"].map(String::from).into(),
        "without MetricsConfig: what AWS emits, and the time lag"
    );
    Ok(())
}
