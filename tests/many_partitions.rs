//! One mapping over thousands of partitions (issue 13: 20,000 partitions, `run --max-seconds 15` took 125 s),
//! on the in-process Kafka: the run recognises idle partitions as caught up without a broker round trip per
//! partition, loses nothing, and ends by its deadline. `tests/scale_topics.rs` measures the full size.

mod common;

use std::time::{Duration, Instant};

use kafka_lambda_relay::app::run_all;
use kafka_lambda_relay::invoke::server::{handler, Reply};
use kafka_lambda_relay::kafka::consumer::LOG_BOUNDS_CHUNK;
use kafka_lambda_relay::relay::CLOSE_GRACE;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use common::*;

const TOPICS: usize = 20;
const PARTITIONS: i32 = 100;

/// 2,000 empty partitions whose Fetch requests all fail: the run must find them caught up from their log
/// ends, not from records. The bound it checks: the run ends by its deadline and grace, it is recognised as
/// caught up well before its cutoff, every LATEST start is committed, and its `ListOffsets` requests are a
/// handful of chunked lookups, never one per partition (the engine before issue 13's fix asked the broker
/// for a never-fetched partition's watermarks one partition at a time, 0.27 s each on a busy cluster, inside
/// the loop; 20,000 partitions took minutes, past any deadline).
///
/// What this test cannot show on the mock: the old per-partition path is not reached at this size, because
/// librdkafka takes a partition's high watermark even from a failed Fetch answer of the mock, so the old
/// engine passes it too (6 `ListOffsets` requests, 2.6 s). The scale of the defect is measured by the
/// ignored `tests/scale_topics.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_are_caught_up_without_a_round_trip_each_and_the_run_keeps_its_deadline() -> TestResult {
    let harness = Harness::start().await?;
    harness.register("target", handler(|_| async { Reply::success("{}") }));
    let names: Vec<String> = (0..TOPICS).map(|i| unique_name(&format!("many-{i:02}"))).collect();
    for name in &names {
        harness.kafka.create_topic(name, PARTITIONS)?;
    }
    let group = unique_name("many");
    let first = &names[0];
    let mut config = config(harness.kafka.bootstrap_servers(), first, "target", &group, serde_json::json!({"StartingPosition": "LATEST"}));
    config.mappings[0].topics = names.clone();

    harness.kafka.track_requests();
    harness.kafka.fail_next_requests(RDKafkaApiKey::Fetch, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 1000]);
    let options = bounded(30);
    let deadline = options.deadline.expect("bounded");
    let report = run_all(&config, &harness.services, &options).await;
    let ended = Instant::now();

    // The contract: a run ends by its deadline and the grace to leave the group (2 s of slack for a loaded
    // machine's scheduling).
    assert!(ended <= deadline + CLOSE_GRACE + Duration::from_secs(2), "the run ended {:?} past its deadline", ended - deadline);
    let mapping = &report.mappings[0];
    assert_eq!(mapping.partitions.len(), TOPICS * PARTITIONS as usize, "{}", mapping.last_processing_result);
    assert_eq!(mapping.last_processing_result, "No records processed");
    // Caught up, not cut off: with `until_idle` the run stopped before its cutoff (deadline minus the target's
    // 1 s timeout and the margin) because every partition was found at its log end.
    assert!(ended < deadline - Duration::from_secs(2), "the run was not recognised as caught up before its deadline");

    // Nothing lost: every partition's LATEST start is committed, so the next run starts there and skips
    // nothing produced in between.
    assert!(harness.delivered("target").is_empty());
    for name in &names {
        assert_eq!(harness.committed(&group, name, PARTITIONS), vec![Some(0); PARTITIONS as usize], "committed offsets of {name}");
    }

    // No round trip per partition: the starting-offset lookup of the assignment and the caught-up lookups
    // each take one request per LOG_BOUNDS_CHUNK partitions (a handful of lookups in a run this short).
    let list_offsets = harness.kafka.requests(RDKafkaApiKey::ListOffsets);
    let per_lookup = (TOPICS * PARTITIONS as usize).div_ceil(LOG_BOUNDS_CHUNK);
    eprintln!("ListOffsets requests: {list_offsets}, Fetch requests: {}", harness.kafka.requests(RDKafkaApiKey::Fetch));
    assert!(list_offsets <= 10 * per_lookup, "{list_offsets} ListOffsets requests for {} partitions", TOPICS * PARTITIONS as usize);
    Ok(())
}
