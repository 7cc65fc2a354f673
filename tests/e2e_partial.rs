#![cfg(feature = "e2e")]
//! A real partial batch response: `partial-target` (a `lambda_runtime` function under `cargo lambda watch`)
//! reports the first record of each partition whose value starts with `fail` as a batch item failure, once;
//! the relay must retry from exactly that record and commit everything.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;

const PARTIAL: &str = "partial-target";

#[test]
fn a_real_partial_batch_response_retries_from_the_reported_record() -> TestResult {
    const PARTITIONS: i32 = 2;
    let topic = unique_name("partial");
    let group = unique_name("group");
    create_topic(&tansu(), &topic, PARTITIONS)?;
    // Per partition: ok-0 .. ok-3, fail-4, ok-5 .. ok-9 (values by index within the partition).
    let produced = populate_topic(&tansu(), &topic, PARTITIONS, 20, |i| {
        let index = i / PARTITIONS as usize;
        if index == 4 { format!("fail-{i}") } else { format!("ok-{i}") }
    })?;
    let mut mapping = tansu_mapping(PARTIAL, &topic, &group);
    mapping["FunctionResponseTypes"] = json!(["ReportBatchItemFailures"]);
    mapping["MaximumBatchingWindowInSeconds"] = json!(1);
    let report = run_relay_ok(&json!({"Mappings": [mapping]}))?;

    let received = delivered(PARTIAL, &topic)?;
    let produced = produced_by_partition(&produced);
    for (partition, records) in &produced {
        let failing = records.iter().position(|(_, v)| v.starts_with("fail")).expect("a failing record") as i64;
        let failing_offset = records[failing as usize].0;
        let seen: Vec<(i64, bool)> =
            received.iter().filter(|d| d.partition == *partition).map(|d| (d.offset, d.accepted)).collect();
        // Every record arrives once before the failure is reported, then the failing record and every
        // later one arrive again; nothing before it is sent twice.
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for (offset, _) in &seen {
            *counts.entry(*offset).or_default() += 1;
        }
        for (offset, _) in records {
            let expected = if *offset >= failing_offset { 2 } else { 1 };
            assert_eq!(counts.get(offset).copied(), Some(expected), "partition {partition} offset {offset}: {seen:?}");
        }
        assert!(seen.iter().any(|(o, accepted)| *o == failing_offset && !accepted), "the function rejected it once");
    }
    let last: Vec<Option<i64>> = produced.values().map(|records| records.last().map(|(o, _)| o + 1)).collect();
    assert_eq!(committed_offsets(&tansu(), &group, &topic, PARTITIONS)?, last);
    let m = &report["Mappings"][0];
    assert_eq!(m["Counts"]["Delivered"], 20, "report: {m}");
    assert_eq!(m["LastProcessingResult"], "OK", "report: {m}");
    Ok(())
}
