//! The delivery core on an in-process Kafka and Lambda: order, completeness, commits, restarts, starting
//! positions, batch limits.

mod common;

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::{always, echo_success, handler, Reply};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_record_in_order_and_commits_last_plus_one() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 16, 50)?;
    h.register(&function, echo_success());

    let report = run_all(&config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"BatchSize": 10})), &h.services, &until_idle()).await;

    let delivered = offsets_by_partition(&h.delivered(&function));
    assert_eq!(delivered.len(), 16);
    for (partition, offsets) in &delivered {
        assert_eq!(offsets, &(0..50).collect::<Vec<i64>>(), "partition {partition}: every record once, in order");
    }
    assert_eq!(h.committed(&group, &topic, 16), vec![Some(50); 16]);
    let m = &report.mappings[0];
    assert_eq!((m.counts.polled, m.counts.delivered, m.counts.committed), (800, 800, 800));
    assert_eq!(m.offset_lag.sum, 0);
    assert_eq!(m.last_processing_result, "OK");
    assert!(m.partitions.iter().all(|p| p.committed_offset == Some(50) && p.lag == Some(0)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_run_resumes_exactly_where_the_last_one_committed() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 16, 10)?;
    h.register(&function, echo_success());
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({}));

    run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(h.delivered(&function).len(), 160);
    h.produce(&topic, 16, 10, 15)?;
    let report = run_all(&cfg, &h.services, &until_idle()).await;

    let delivered = offsets_by_partition(&h.delivered(&function));
    for offsets in delivered.values() {
        assert_eq!(offsets, &(0..15).collect::<Vec<i64>>(), "no loss and no duplicate across a clean restart");
    }
    assert_eq!(report.mappings[0].counts.delivered, 80);
    assert_eq!(h.committed(&group, &topic, 16), vec![Some(15); 16]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_group_offsets_win_over_starting_position() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 16, 5)?;
    h.register(&function, echo_success());
    run_all(&config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({})), &h.services, &until_idle()).await;
    h.produce(&topic, 16, 5, 8)?;

    // The same group with LATEST still resumes from its committed offsets (5), not the log end (8).
    let latest = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"StartingPosition": "LATEST"}));
    run_all(&latest, &h.services, &until_idle()).await;

    for offsets in offsets_by_partition(&h.delivered(&function)).values() {
        assert_eq!(offsets, &(0..8).collect::<Vec<i64>>());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_skips_existing_records_and_remembers_where_it_started() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 16, 4)?;
    h.register(&function, echo_success());
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"StartingPosition": "LATEST"}));

    let first = run_all(&cfg, &h.services, &until_idle()).await;
    assert_eq!(h.delivered(&function), Vec::<(i32, i64)>::new(), "LATEST delivers nothing already in the log");
    assert_eq!(first.mappings[0].last_processing_result, "No records processed");
    assert_eq!(h.committed(&group, &topic, 16), vec![Some(4); 16], "the start position is committed");

    // Records produced between runs are not lost to a second LATEST start.
    h.produce(&topic, 16, 4, 6)?;
    run_all(&cfg, &h.services, &until_idle()).await;
    for offsets in offsets_by_partition(&h.delivered(&function)).values() {
        assert_eq!(offsets, &vec![4, 5]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_limits_every_invocation() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 16, 20)?;
    h.register(&function, echo_success());
    run_all(&config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"BatchSize": 7})), &h.services, &until_idle()).await;

    let sizes: Vec<usize> = h.lambda.invocations(&function).iter().map(|i| event_records(&i.payload).len()).collect();
    assert!(sizes.iter().all(|&n| n <= 7), "{sizes:?}");
    assert!(sizes.contains(&7), "full batches are sent: {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 320);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_window_gathers_records_into_one_invocation() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 1, 30)?;
    h.register(&function, echo_success());
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"BatchSize": 10000, "MaximumBatchingWindowInSeconds": 1}));
    run_all(&cfg, &h.services, &until_idle()).await;
    let sizes: Vec<usize> = h.lambda.invocations(&function).iter().map(|i| event_records(&i.payload).len()).collect();
    assert_eq!(sizes, vec![30], "the window holds the batch open until every record has arrived");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_megabyte_cap_splits_batches() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("blobs"), unique_name("group"), unique_name("fn"));
    h.kafka.create_topic(&topic, 8)?;
    // 1.1 MB values are 1.47 MB in base64: four fit in 6 MiB (6,291,456 bytes), five do not.
    let value = vec![b'x'; 1_100_000];
    for p in 0..8 {
        h.kafka.produce(&topic, p, None, Some(&value))?;
    }
    h.kafka.flush()?;
    h.register(&function, echo_success());
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"BatchSize": 100, "MaximumBatchingWindowInSeconds": 1}));
    run_all(&cfg, &h.services, &until_idle()).await;

    let invocations = h.lambda.invocations(&function);
    for invocation in &invocations {
        assert!(invocation.payload.len() <= 6 * 1024 * 1024, "event of {} bytes", invocation.payload.len());
    }
    let sizes: Vec<usize> = invocations.iter().map(|i| event_records(&i.payload).len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 8);
    assert!(sizes.iter().all(|&n| n <= 4) && sizes.contains(&4), "{sizes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_partition_blocks_only_itself_and_nothing_past_the_failure_is_committed() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 4, 10)?;
    // Any batch holding partition 2's offset 5 fails; everything else succeeds.
    h.register(
        &function,
        handler(|invocation| async move {
            if event_records(&invocation.payload).contains(&(2, 5)) {
                Reply::unhandled("PoisonError", "cannot handle 2:5")
            } else {
                Reply::success("{}")
            }
        }),
    );
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"BatchSize": 3}));
    let options = kafka_lambda_relay::relay::RunOptions { until_idle: false, ..bounded(8) };
    let report = run_all(&cfg, &h.services, &options).await;

    let committed = h.committed(&group, &topic, 4);
    let stuck_at = committed[2].expect("partition 2 committed what came before the failing batch");
    assert!(stuck_at <= 5, "nothing past the failing record 5 is committed: {committed:?}");
    assert_eq!([committed[0], committed[1], committed[3]], [Some(10); 3], "other partitions flow");
    let delivered = offsets_by_partition(&h.delivered(&function));
    let m = &report.mappings[0];
    let blocked = m.partitions.iter().find(|p| p.partition == 2).and_then(|p| p.blocked.clone()).expect("partition 2 is blocked");
    assert_eq!(blocked.offset, stuck_at, "the report names the offset the partition is stuck on");
    let before: std::collections::BTreeSet<i64> = delivered[&2].iter().copied().filter(|o| *o < stuck_at).collect();
    assert_eq!(before, (0..stuck_at).collect(), "every record before the stuck batch was delivered");
    assert!(m.last_processing_result.starts_with("PROBLEM: partition"), "{}", m.last_processing_result);
    assert!(m.counts.failed_invocations >= 2, "it kept retrying");
    assert_eq!(m.counts.dropped + m.counts.sent_to_destination, 0, "nothing given up with infinite retries");
    for p in [0, 1, 3] {
        assert_eq!(delivered[&p].iter().copied().filter(|o| *o < 10).collect::<std::collections::BTreeSet<_>>().len(), 10);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_is_reported_as_function_config_not_valid() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group) = (unique_name("orders"), unique_name("group"));
    h.seed(&topic, 1, 1)?;
    h.register("other", always(Reply::success("{}")));
    let report = run_all(&config(h.kafka.bootstrap_servers(), &topic, "missing", &group, serde_json::json!({})), &h.services, &until_idle()).await;
    let m = &report.mappings[0];
    assert_eq!(m.error_code.as_deref(), Some("FUNCTION_CONFIG_NOT_VALID"));
    assert_eq!(m.state, "Failed");
    assert_eq!(h.committed(&group, &topic, 1), vec![None], "nothing polled or committed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_matching_no_filter_are_skipped_and_committed() -> TestResult {
    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.kafka.create_topic(&topic, 1)?;
    for (i, kind) in ["premium", "basic", "premium", "basic", "basic"].iter().enumerate() {
        h.kafka.produce(&topic, 0, None, Some(format!(r#"{{"id": {i}, "tier": "{kind}"}}"#).as_bytes()))?;
    }
    h.kafka.produce(&topic, 0, None, Some(b"not json"))?;
    h.kafka.flush()?;
    h.register(&function, echo_success());
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({
        "FilterCriteria": {"Filters": [{"Pattern": "{\"value\": {\"tier\": [\"premium\"]}}"}]}}));
    let report = run_all(&cfg, &h.services, &until_idle()).await;

    assert_eq!(h.delivered(&function), vec![(0, 0), (0, 2)]);
    assert_eq!(h.committed(&group, &topic, 1), vec![Some(6)], "filtered-out records are committed too");
    let m = &report.mappings[0];
    assert_eq!((m.counts.polled, m.counts.filtered_out, m.counts.delivered), (6, 4, 2));
    Ok(())
}

/// Two relays on one group: the second joins mid-run and leaves, so the first gives up half its partitions
/// and gets them back (revoked, then assigned again, while records of theirs wait). Every partition is
/// invoked again after it comes back, no partition is ever in two invocations at once (across both
/// members), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_never_overlap_a_partition_and_every_returned_partition_is_delivered() -> TestResult {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let h = Harness::start().await?;
    let (topic, group, function) = (unique_name("orders"), unique_name("group"), unique_name("fn"));
    h.seed(&topic, 8, 300)?;
    let in_flight: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (flight, overlap) = (in_flight.clone(), overlaps.clone());
    h.register(
        &function,
        handler(move |invocation| {
            let partitions: HashSet<i32> = event_records(&invocation.payload).into_iter().map(|(p, _)| p).collect();
            {
                let mut busy = flight.lock().unwrap();
                for p in &partitions {
                    if !busy.insert(*p) {
                        overlap.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            let (flight, partitions) = (flight.clone(), partitions);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut busy = flight.lock().unwrap();
                for p in &partitions {
                    busy.remove(p);
                }
                Reply::success("{}")
            }
        }),
    );
    let cfg = config(h.kafka.bootstrap_servers(), &topic, &function, &group, serde_json::json!({"BatchSize": 10}));
    let long = kafka_lambda_relay::relay::RunOptions { until_idle: false, ..bounded(11) };
    let short = kafka_lambda_relay::relay::RunOptions { until_idle: false, ..bounded(6) };
    let first = run_all(&cfg, &h.services, &long);
    let second = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        run_all(&cfg, &h.services, &short).await
    };
    let (first, second) = tokio::join!(first, second);

    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a partition was in two invocations at once");
    let second_polled = second.mappings[0].counts.polled;
    assert!(second_polled > 0, "the second member took partitions over: {second:?}");
    let delivered = offsets_by_partition(&h.delivered(&function));
    for p in 0..8 {
        let offsets: std::collections::BTreeSet<i64> = delivered.get(&p).into_iter().flatten().copied().collect();
        assert_eq!(offsets.len(), 300, "partition {p}: every record delivered; first member: {:?}", first.mappings[0].partitions);
    }
    assert_eq!(h.committed(&group, &topic, 8), vec![Some(300); 8], "the first member finished every partition, including the returned ones");
    assert!(first.mappings[0].partitions.len() == 8, "the first member holds all 8 again at the end: {:?}", first.mappings[0].partitions);
    Ok(())
}
