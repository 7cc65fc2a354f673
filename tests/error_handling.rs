//! Partial batch responses, bisection, retry and age limits, destinations: SPEC section 4 on an in-process
//! Kafka and Lambda. Every test checks that no offset is committed past a record that was neither
//! delivered nor handed to the destination.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::{handler, script, Reply};
use kafka_lambda_relay::relay::RunOptions;
use common::*;

const DLQ: &str = "arn:aws:sqs:us-east-1:123456789012:relay-dlq";

fn failures(items: &[(String, i64)]) -> Reply {
    let list: Vec<serde_json::Value> = items
        .iter()
        .map(|(p, o)| serde_json::json!({"itemIdentifier": {"partition": p, "offset": o}}))
        .collect();
    Reply::json(&serde_json::json!({ "batchItemFailures": list }))
}

/// Offsets per partition of each invocation, in the order received.
fn invocations(h: &Harness, function: &str) -> Vec<Vec<(i32, i64)>> {
    h.lambda.invocations(function).iter().map(|i| event_records(&i.payload)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failure_retries_from_the_lowest_offset_of_each_named_partition() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 3, 10)?;
    h.register(
        &function,
        script(vec![failures(&[(format!("{topic}-0"), 7), (format!("{topic}-0"), 4), (format!("{topic}-1"), 2)])], Reply::success("{}")),
    );
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "FunctionResponseTypes": ["ReportBatchItemFailures"], "MaximumBatchingWindowInSeconds": 1}));
    let report = run_all(&cfg, &h.services, &until_idle()).await;

    let calls = invocations(&h, &function);
    assert_eq!(calls[0].len(), 30, "the first batch holds all three partitions");
    let mut retried: Vec<(i32, i64)> = calls[1..].iter().flatten().copied().collect();
    retried.sort();
    let expected: Vec<(i32, i64)> = (4..10).map(|o| (0, o)).chain((2..10).map(|o| (1, o))).collect();
    assert_eq!(retried, expected, "only the checkpoint and what follows it, in named partitions");
    assert_eq!(h.committed(&group, &topic, 3), vec![Some(10); 3]);
    assert_eq!(report.mappings[0].counts.delivered, 30);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_item_identifiers_fail_the_whole_batch() -> TestResult {
    for bad in [
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": null}]}),
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": {"partition": "x-0", "offset": 1}}]}),
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": {"partition": "PLACEHOLDER", "offset": 999}}]}),
        serde_json::json!({"batchItemFailures": [{}]}),
    ] {
        let h = Harness::start().await?;
        let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
        h.seed(&topic, 1, 5)?;
        let bad = serde_json::from_str(&bad.to_string().replace("PLACEHOLDER", &format!("{topic}-0")))?;
        h.register(&function, script(vec![Reply::json(&bad)], Reply::success("{}")));
        let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
            "FunctionResponseTypes": ["ReportBatchItemFailures"], "MaximumBatchingWindowInSeconds": 1}));
        run_all(&cfg, &h.services, &until_idle()).await;
        let calls = invocations(&h, &function);
        let all: Vec<(i32, i64)> = (0..5).map(|o| (0, o)).collect();
        assert_eq!(calls, vec![all.clone(), all], "{bad}: the whole batch is retried");
        assert_eq!(h.committed(&group, &topic, 1), vec![Some(5)]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_response_is_ignored_without_report_batch_item_failures() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 5)?;
    h.register(&function, script(vec![failures(&[(format!("{topic}-0"), 0)])], Reply::success("{}")));
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"MaximumBatchingWindowInSeconds": 1}));
    run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(h.lambda.invocation_count(&function), 1);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(5)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisection_isolates_one_poison_record_among_a_thousand() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 1000)?;
    h.register(
        &function,
        handler(|invocation| async move {
            if event_records(&invocation.payload).contains(&(0, 537)) {
                Reply::unhandled("PoisonError", "record 537")
            } else {
                Reply::success("{}")
            }
        }),
    );
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "BatchSize": 1000, "MaximumBatchingWindowInSeconds": 2, "BisectBatchOnFunctionError": true,
        "MaximumRetryAttempts": 0, "DestinationConfig": {"OnFailure": {"Destination": DLQ}}}));
    let report = run_all(&cfg, &h.services, &until_idle()).await;

    let calls = invocations(&h, &function);
    assert_eq!(calls[0].len(), 1000, "one batch of 1000");
    // One failing call per halving (10 levels down to a single record) plus the good halves.
    assert!(calls.len() <= 1 + 2 * 10, "{} invocations", calls.len());
    let delivered: Vec<i64> = calls.iter().filter(|c| !c.contains(&(0, 537))).flatten().map(|(_, o)| *o).collect();
    assert_eq!(delivered, (0..1000).filter(|o| *o != 537).collect::<Vec<_>>(), "the 999 others, once each, in order");
    let written = h.destination.written.lock().unwrap().clone();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].records, vec![(0, 537)]);
    assert_eq!(written[0].condition, "RetryAttemptsExhausted");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(1000)], "committed past the record sent to the destination");
    assert_eq!(report.mappings[0].counts.sent_to_destination, 1);
    Ok(())
}

async fn invocations_until_given_up(retries: i64, destination: bool) -> TestResult<(usize, Harness, String, String)> {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 1)?;
    h.register(&function, handler(|_| async { Reply::unhandled("Boom", "always fails") }));
    let mut extra = serde_json::json!({"MaximumRetryAttempts": retries});
    if destination {
        extra["DestinationConfig"] = serde_json::json!({"OnFailure": {"Destination": DLQ}});
    }
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, extra);
    let options = bounded(6);
    run_all(&cfg, &h.services, &options).await;
    Ok((h.lambda.invocation_count(&function), h, topic, group))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_retry_attempts_zero_two_and_infinite() -> TestResult {
    let (count, h, topic, group) = invocations_until_given_up(0, false).await?;
    assert_eq!(count, 1, "0 retries: one attempt");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(1)], "dropped, then committed");

    let (count, h, topic, group) = invocations_until_given_up(2, true).await?;
    assert_eq!(count, 3, "2 retries: three attempts");
    assert_eq!(h.destination.written.lock().unwrap()[0].approximate_invoke_count, 3);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(1)]);

    let (count, h, topic, group) = invocations_until_given_up(-1, true).await?;
    assert_eq!(count, 11, "-1 with a destination means 10 retries");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(1)]);

    let (count, h, topic, group) = invocations_until_given_up(-1, false).await?;
    assert!(count > 11, "-1 without a destination retries until the run ends ({count})");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(0)], "the failing record is never committed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_are_given_up_without_being_invoked() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.kafka.create_topic(&topic, 1)?;
    let two_hours_ago = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 2 * 3600 * 1000;
    for i in 0..3 {
        h.kafka.produce_at(&topic, 0, None, Some(format!("old {i}").as_bytes()), Some(two_hours_ago))?;
    }
    for i in 0..2 {
        h.kafka.produce(&topic, 0, None, Some(format!("new {i}").as_bytes()))?;
    }
    h.kafka.flush()?;
    h.register(&function, script(vec![], Reply::success("{}")));
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "MaximumRecordAgeInSeconds": 3600, "MaximumBatchingWindowInSeconds": 1,
        "DestinationConfig": {"OnFailure": {"Destination": DLQ}}}));
    run_all(&cfg, &h.services, &until_idle()).await;

    assert_eq!(h.delivered(&function), vec![(0, 3), (0, 4)], "only the new records reach the function");
    let written = h.destination.written.lock().unwrap().clone();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].records, vec![(0, 0), (0, 1), (0, 2)]);
    assert_eq!(written[0].approximate_invoke_count, 0);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(5)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_and_server_errors_never_exhaust_retries() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 3)?;
    h.register(
        &function,
        script(vec![Reply::throttled(), Reply::service_error(503), Reply::throttled(), Reply::service_error(500), Reply::service_error(502)], Reply::success("{}")),
    );
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"MaximumRetryAttempts": 0, "MaximumBatchingWindowInSeconds": 1}));
    let report = run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(h.lambda.invocation_count(&function), 6);
    let m = &report.mappings[0];
    assert_eq!((m.counts.delivered, m.counts.dropped), (3, 0), "delivered, not given up");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_counts_carry_across_separate_runs() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 2)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stop_after_second = stop_tx.clone();
    h.register(
        &function,
        handler(move |invocation| {
            let stop = stop_after_second.clone();
            async move {
                if invocation.seq == 1 {
                    // The first run is "killed" by its schedule after two failed attempts.
                    let _ = stop.send(true);
                }
                Reply::unhandled("Boom", "always fails")
            }
        }),
    );
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"MaximumRetryAttempts": 3, "MaximumBatchingWindowInSeconds": 1}));
    let first = RunOptions { stop: Some(stop_rx), retry_backoff: (Duration::from_millis(200), Duration::from_millis(400)), ..until_idle() };
    run_all(&cfg, &h.services, &first).await;
    assert_eq!(h.lambda.invocation_count(&function), 2);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(0)]);

    let report = run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(h.lambda.invocation_count(&function), 4, "the second run made only the 2 attempts left of 1 + 3");
    assert_eq!(report.mappings[0].counts.dropped, 2);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(2)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_while_the_destination_is_down_and_records_go_out_when_it_returns() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 6)?;
    h.register(
        &function,
        handler(|invocation| async move {
            if event_records(&invocation.payload).contains(&(0, 3)) {
                Reply::unhandled("Boom", "record 3")
            } else {
                Reply::success("{}")
            }
        }),
    );
    h.destination.failing.store(true, Ordering::SeqCst);
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "BatchSize": 1, "MaximumRetryAttempts": 0, "DestinationConfig": {"OnFailure": {"Destination": DLQ}}}));
    let short = bounded(4);
    let report = run_all(&cfg, &h.services, &short).await;
    assert!(h.destination.refused.load(Ordering::SeqCst) >= 2, "the write is retried");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)], "nothing committed past the record waiting for the destination");
    let blocked = report.mappings[0].partitions[0].blocked.clone().expect("blocked");
    assert_eq!(blocked.offset, 3);
    assert!(blocked.reason.contains("AccessDenied"), "{}", blocked.reason);

    h.destination.failing.store(false, Ordering::SeqCst);
    run_all(&cfg, &h.services, &until_idle()).await;
    let written = h.destination.written.lock().unwrap().clone();
    assert_eq!(written.iter().map(|w| w.records.clone()).collect::<Vec<_>>(), vec![vec![(0, 3)]]);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(6)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_destination_write_and_commit_duplicates_but_never_loses() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.seed(&topic, 1, 3)?;
    h.register(&function, handler(|_| async { Reply::unhandled("Boom", "always") }));
    let crashing = Arc::new(CrashAfterWrite { inner: h.destination.clone(), crashed: AtomicBool::new(false) });
    let sink = crashing.clone();
    let mut services = h.services.clone();
    services.sinks = Arc::new(move |_arn: &str| Ok(sink.clone() as Arc<dyn kafka_lambda_relay::relay::FailureSink>));
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "MaximumRetryAttempts": 0, "MaximumBatchingWindowInSeconds": 1, "DestinationConfig": {"OnFailure": {"Destination": DLQ}}}));
    let short = bounded(4);
    run_all(&cfg, &services, &short).await;
    assert_eq!(h.destination.written.lock().unwrap().len(), 1, "written once before the crash");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(0)], "the crash came before the commit: nothing past record 0");

    run_all(&cfg, &services, &until_idle()).await;
    let written = h.destination.written.lock().unwrap().clone();
    let all: Vec<(i32, i64)> = (0..3).map(|o| (0, o)).collect();
    assert_eq!(written.iter().map(|w| w.records.clone()).collect::<Vec<_>>(), vec![all.clone(), all], "a duplicate, not a gap");
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);
    Ok(())
}

/// Writes, then dies (the delivery job panics) the first time, before the relay can commit.
struct CrashAfterWrite {
    inner: Arc<FakeDestination>,
    crashed: AtomicBool,
}

#[async_trait::async_trait]
impl kafka_lambda_relay::relay::FailureSink for CrashAfterWrite {
    async fn send(&self, given_up: &kafka_lambda_relay::destination::GivenUp<'_>) -> Result<String, kafka_lambda_relay::destination::DestinationError> {
        let result = self.inner.send(given_up).await;
        if !self.crashed.swap(true, Ordering::SeqCst) {
            panic!("simulated crash after the destination write");
        }
        result
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_goes_to_the_destination_without_an_invocation() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("t"), unique_name("g"), unique_name("fn"));
    h.kafka.create_topic(&topic, 1)?;
    h.kafka.produce(&topic, 0, None, Some(b"small"))?;
    // 4.8 MB is 6.4 MB in base64: alone it exceeds the 6 MB event limit.
    h.kafka.produce(&topic, 0, None, Some(&vec![b'x'; 4_800_000]))?;
    h.kafka.produce(&topic, 0, None, Some(b"after"))?;
    h.kafka.flush()?;
    h.register(&function, script(vec![], Reply::success("{}")));
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"DestinationConfig": {"OnFailure": {"Destination": DLQ}}}));
    let report = run_all(&cfg, &h.services, &until_idle()).await;

    let delivered: BTreeSet<(i32, i64)> = h.delivered(&function).into_iter().collect();
    assert_eq!(delivered, [(0, 0), (0, 2)].into_iter().collect());
    let written = h.destination.written.lock().unwrap().clone();
    assert_eq!(written.len(), 1);
    assert_eq!((written[0].condition, written[0].records.clone(), written[0].approximate_invoke_count), ("MaximumPayloadSizeExceeded", vec![(0, 1)], 0));
    assert!(written[0].payload_len > 6 * 1024 * 1024);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(3)]);
    assert_eq!(report.mappings[0].counts.sent_to_destination, 1);
    Ok(())
}
