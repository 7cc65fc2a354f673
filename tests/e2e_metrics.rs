#![cfg(feature = "e2e")]
//! The EMF lines of a real run against tansu: AWS's metric names, units and dimensions, the groups a
//! mapping's `MetricsConfig` selects, and per-interval deltas that add up to the run report's counts.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{json, Value};

/// The unit of every metric the relay emits.
fn expected_unit(name: &str) -> Option<&'static str> {
    Some(match name {
        "TimeLag" | "PartitionTimeLag" => "Seconds",
        "InvocationDuration" => "Milliseconds",
        "BatchSizeBytes" => "Bytes",
        "OffsetLag"
        | "PolledEventCount"
        | "FilteredOutEventCount"
        | "InvokedEventCount"
        | "FailedInvokeEventCount"
        | "DroppedEventCount"
        | "OnFailureDestinationDeliveredEventCount"
        | "CommittedEventCount"
        | "PollingErrorCount"
        | "InvokeErrorCount"
        | "OnFailureDestinationDeliveryErrorCount"
        | "SchemaRegistryErrorCount"
        | "CommitErrorCount"
        | "MaxOffsetLag"
        | "SumOffsetLag"
        | "BatchRecordCount"
        | "PartitionOffsetLag" => "Count",
        _ => return None,
    })
}

/// The EMF documents among the relay's stderr lines.
fn emf_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"_aws\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Sum of `name` over the lines of mapping `uuid` (arrays summed element by element).
fn sum(lines: &[&Value], name: &str) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.get(name))
        .map(|v| match v {
            Value::Array(values) => values.iter().filter_map(Value::as_u64).sum(),
            other => other.as_u64().unwrap_or(0),
        })
        .sum()
}

#[test]
fn emf_lines_carry_aws_names_units_dimensions_and_deltas_that_add_up_to_the_report() -> TestResult {
    const PARTITIONS: i32 = 2;
    const COUNT: usize = 600;
    let topic = unique_name("metrics");
    create_topic(&tansu(), &topic, PARTITIONS)?;
    populate_topic(&tansu(), &topic, PARTITIONS, COUNT, |i| format!("m{i}"))?;

    let mut all = tansu_mapping("recording-target", &topic, &unique_name("group"));
    // One record per invocation, no batching window: several hundred invocations per partition, one after
    // the other, so the run spans several 1 s intervals.
    all["BatchSize"] = json!(1);
    all["MaximumBatchingWindowInSeconds"] = json!(0);
    all["MetricsConfig"] = json!({"Metrics": ["EventCount", "ErrorCount", "KafkaMetrics"]});
    let mut events_only = tansu_mapping("recording-target", &topic, &unique_name("group"));
    events_only["BatchSize"] = json!(1);
    events_only["MaximumBatchingWindowInSeconds"] = json!(0);
    events_only["MetricsConfig"] = json!({"Metrics": ["EventCount"]});
    let default = tansu_mapping("recording-target", &topic, &unique_name("group"));
    let uuids: Vec<String> = [&all, &events_only, &default]
        .iter()
        .map(|m| m["UUID"].as_str().unwrap_or_default().to_owned())
        .collect();

    // A 1 s interval (instead of 60 s) so this short run spans several intervals.
    std::env::set_var("RELAY_METRICS_INTERVAL_SECONDS", "1");
    let finished = run_relay(&json!({"Mappings": [all, events_only, default]}), &["--metrics"])?;
    std::env::remove_var("RELAY_METRICS_INTERVAL_SECONDS");
    assert_eq!(finished.code(), Some(0), "{}", finished.stderr_tail());
    let report = finished.json()?;
    let lines = emf_lines(&finished.stderr);
    assert!(!lines.is_empty(), "no EMF line on stderr:\n{}", finished.stderr_tail());

    for line in &lines {
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "KafkaLambdaRelay");
        assert!(
            line["_aws"]["Timestamp"]
                .as_i64()
                .is_some_and(|t| t > 1_700_000_000_000),
            "{line}"
        );
        let dimensions = &directive["Dimensions"][0];
        let expected_dimensions = if line.get("Partition").is_some() {
            json!(["EventSourceMappingUUID", "FunctionName", "Topic", "Partition"])
        } else {
            json!(["EventSourceMappingUUID", "FunctionName"])
        };
        assert_eq!(dimensions, &expected_dimensions, "{line}");
        assert_eq!(line["FunctionName"], "recording-target");
        for metric in directive["Metrics"].as_array().ok_or("no Metrics")? {
            let name = metric["Name"].as_str().unwrap_or_default();
            assert_eq!(metric["Unit"].as_str(), expected_unit(name), "unit of {name}");
            assert!(line.get(name).is_some(), "{name} has no value in {line}");
        }
    }

    let of = |uuid: &str| -> Vec<&Value> { lines.iter().filter(|l| l["EventSourceMappingUUID"] == uuid).collect() };
    let names_of = |uuid: &str| -> BTreeSet<String> {
        of(uuid)
            .iter()
            .flat_map(|l| {
                l["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|m| m["Name"].as_str().map(str::to_owned))
            .collect()
    };

    // Group selection: without MetricsConfig only what AWS emits without it (OffsetLag) and the time lag.
    let default_names = names_of(&uuids[2]);
    assert!(default_names.contains("OffsetLag"), "{default_names:?}");
    assert!(
        default_names.is_subset(&["OffsetLag", "TimeLag"].map(String::from).into()),
        "{default_names:?}"
    );
    let events_names = names_of(&uuids[1]);
    assert!(events_names.contains("PolledEventCount") && events_names.contains("InvocationDuration"));
    assert!(
        !events_names.iter().any(|n| n.contains("Error")
            || n.starts_with("Partition")
            || (n.ends_with("OffsetLag") && n != "OffsetLag")),
        "{events_names:?}"
    );
    let all_names = names_of(&uuids[0]);
    for name in [
        "MaxOffsetLag",
        "SumOffsetLag",
        "PartitionOffsetLag",
        "PartitionTimeLag",
        "CommittedEventCount",
        "BatchSizeBytes",
    ] {
        assert!(all_names.contains(name), "{name} missing from {all_names:?}");
    }
    // Error counts appear only when an error happened: none in this run.
    assert!(!all_names.iter().any(|n| n.ends_with("ErrorCount")), "{all_names:?}");

    // Deltas: the intervals' counts add up to the run report's counts.
    for uuid in &uuids[..2] {
        let mapping = mapping_report(&report, uuid)?;
        let counts = &mapping["Counts"];
        let mine = of(uuid);
        let intervals = mine.iter().filter(|l| l.get("PolledEventCount").is_some()).count();
        assert!(intervals >= 2, "expected several intervals for {uuid}, got {intervals}");
        let expected: BTreeMap<&str, u64> = [
            ("PolledEventCount", "Polled"),
            ("FilteredOutEventCount", "FilteredOut"),
            ("InvokedEventCount", "InvokedEvents"),
            ("FailedInvokeEventCount", "FailedInvokeEvents"),
            ("DroppedEventCount", "Dropped"),
            ("OnFailureDestinationDeliveredEventCount", "SentToDestination"),
            ("CommittedEventCount", "Committed"),
        ]
        .into_iter()
        .map(|(metric, field)| (metric, counts[field].as_u64().unwrap_or(u64::MAX)))
        .collect();
        let emitted: BTreeMap<&str, u64> = expected.keys().map(|name| (*name, sum(&mine, name))).collect();
        assert_eq!(emitted, expected, "per-interval sums of {uuid} against the report");
        assert_eq!(expected["PolledEventCount"], COUNT as u64);
        assert_eq!(expected["InvokedEventCount"], COUNT as u64, "every record invoked once");
        assert_eq!(expected["CommittedEventCount"], COUNT as u64);
        // One BatchRecordCount value per invocation, and together they are the invoked records.
        let invocations: usize = mine
            .iter()
            .filter_map(|l| l["BatchRecordCount"].as_array())
            .map(Vec::len)
            .sum();
        assert_eq!(invocations as u64, counts["Invocations"].as_u64().unwrap_or(0));
        assert_eq!(sum(&mine, "BatchRecordCount"), COUNT as u64);
    }
    // Lag at the end: caught up.
    let last_lag = of(&uuids[0])
        .iter()
        .rev()
        .find_map(|l| l.get("SumOffsetLag").and_then(Value::as_i64));
    assert_eq!(last_lag, Some(0));
    Ok(())
}
