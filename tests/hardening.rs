//! The engine reports what it cannot do instead of looking idle (issue 13): a run too short for one
//! invocation, and partitions whose starting position could not be resolved.

mod common;

use std::time::{Duration, Instant};

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::echo_success;
use kafka_lambda_relay::relay::RunOptions;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use common::{committed_offsets, config, unique_name, until_idle, Harness, TestResult};

// Defect (issue 13): a run shorter than the target's timeout started no invocation and reported
// "No records processed", state Enabled, exit 0, while records waited.
#[tokio::test]
async fn a_run_shorter_than_the_target_timeout_is_a_problem_naming_both() -> TestResult {
    let h = Harness::start().await?;
    let (topic, function, group) = (unique_name("short"), unique_name("fn"), unique_name("group"));
    h.seed(&topic, 1, 5)?;
    h.register(&function, echo_success());
    let config = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({}));
    let options = RunOptions {
        deadline: Some(Instant::now() + Duration::from_secs(10)),
        target_timeout: Some(Duration::from_secs(30)),
        margin: Duration::from_secs(3),
        ..until_idle()
    };
    let report = run_all(&config, &h.services, &options).await;
    let m = &report.mappings[0];
    assert_eq!(m.error_code.as_deref(), Some("RUN_SHORTER_THAN_TARGET_TIMEOUT"));
    assert!(
        m.last_processing_result.starts_with("PROBLEM: the run lasts 9")
            && m.last_processing_result.contains("but the target function's timeout is 30 s (plus 3 s kept for the final commit)"),
        "{}",
        m.last_processing_result
    );
    assert!(report.has_errors(), "the run exits non-zero");
    assert_eq!(h.delivered(&function), vec![]);
    assert_eq!(h.committed(&group, &topic, 1), vec![None], "nothing consumed, nothing committed");
    Ok(())
}

/// A mock cluster of its own whose ListOffsets can be made to fail (the harness's cluster cannot).
fn failing_cluster(topic: &str) -> TestResult<(BaseProducer, String)> {
    let producer: BaseProducer = ClientConfig::new().set("test.mock.num.brokers", "1").set("log_level", "3").create()?;
    // SAFETY: the mock cluster belongs to `producer`, alive for this call; no 3 s first-join delay.
    unsafe {
        let raw = rdkafka::bindings::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0);
    }
    let cluster = producer.client().mock_cluster().ok_or("a mock cluster")?;
    cluster.create_topic(topic, 2, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    drop(cluster);
    Ok((producer, bootstrap))
}

fn produce(producer: &BaseProducer, topic: &str, count: usize) -> TestResult {
    for partition in 0..2 {
        for i in 0..count {
            producer.send(BaseRecord::<(), str>::to(topic).partition(partition).payload(&format!("{i}"))).map_err(|(e, _)| e)?;
        }
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

// Defect (issue 13): a LATEST mapping whose starting-offset lookup failed fell back to librdkafka's reset
// policy, never committed its start and never became idle; the next run skipped what came in between.
#[tokio::test]
async fn an_unresolved_starting_position_is_reported_and_no_record_after_the_start_is_skipped() -> TestResult {
    let h = Harness::start().await?;
    let (topic, function, group) = (unique_name("start"), unique_name("fn"), unique_name("group"));
    let (producer, bootstrap) = failing_cluster(&topic)?;
    h.register(&function, echo_success());
    produce(&producer, &topic, 3)?;
    let latest = config(&bootstrap, &topic, &function, &group, serde_json::json!({"StartingPosition": "LATEST"}));

    // Run 1: every ListOffsets fails. Nothing is consumed, the report says why, the exit is non-zero.
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN; 1000];
    producer.client().mock_cluster().ok_or("a mock cluster")?.request_errors(RDKafkaApiKey::ListOffsets, &errors);
    let started = Instant::now();
    let report = run_all(&latest, &h.services, &until_idle()).await;
    let m = &report.mappings[0];
    assert_eq!(m.error_code.as_deref(), Some("STARTING_POSITION_UNRESOLVED"), "{}", m.last_processing_result);
    assert!(
        m.last_processing_result.starts_with("PROBLEM: the starting position of 2 partition(s) (")
            && m.last_processing_result.contains("LIST_OFFSETS_FAILED"),
        "{}",
        m.last_processing_result
    );
    assert!(report.has_errors());
    assert!(started.elapsed() < Duration::from_secs(15), "the run ends instead of waiting for partitions it cannot read");
    producer.client().mock_cluster().ok_or("a mock cluster")?.clear_request_errors(RDKafkaApiKey::ListOffsets);
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, 2)?, vec![None, None], "no start was committed");

    // Run 2: the lookup works; the start (the log end, 3) is committed although nothing arrived.
    let report = run_all(&latest, &h.services, &until_idle()).await;
    assert_eq!(report.mappings[0].error_code, None, "{}", report.mappings[0].last_processing_result);
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, 2)?, vec![Some(3), Some(3)], "{}", serde_json::to_string(&report)?);

    // Run 3: everything produced after the start is delivered.
    produce(&producer, &topic, 2)?;
    let report = run_all(&latest, &h.services, &until_idle()).await;
    assert_eq!(report.mappings[0].error_code, None);
    let mut delivered = h.delivered(&function);
    delivered.sort();
    assert_eq!(delivered, vec![(0, 3), (0, 4), (1, 3), (1, 4)]);
    assert_eq!(committed_offsets(&bootstrap, &group, &topic, 2)?, vec![Some(5), Some(5)]);
    Ok(())
}
